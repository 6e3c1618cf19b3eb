"""Shared benchmark helpers: timing with warm-up and repeats, results as JSON lines."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def random_gpt2_dir(out: Path, **config) -> Path:
    """A GPT-2 with random weights (GPT2Config defaults, overridden by `config`) and the tests'
    in-process BPE task tokenizer, saved as a Hugging Face directory: no download."""
    if (out / "config.json").is_file():
        return out
    import sys

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import conftest

    tok = conftest.bpe_tokenizer.__wrapped__()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok.backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(out)
    torch.manual_seed(0)
    cfg = GPT2Config(**{"vocab_size": tok.vocab_size, "bos_token_id": 0, "eos_token_id": 0, **config})
    GPT2LMHeadModel(cfg).save_pretrained(out)
    return out


def best_of(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median seconds of `repeats` calls after `warmup` calls (median resists a busy machine)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(name: str, result: dict) -> None:
    line = json.dumps({"benchmark": name, **result})
    print(line)
    out = Path(__file__).with_name("results.jsonl")
    with open(out, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
