"""Time the full study on a GPT-2-small-sized model with random weights (cost does not need
real weights), on the GPU when there is one. For a lent GPU machine:

    CIRCUIT_PLASTICITY_DEVICE=cuda python benchmarks/gpu_study.py --out /tmp/gpu-study
    python benchmarks/gpu_study.py --tiny --seeds 1   # a 2-layer smoke run, minutes on a CPU

The model is GPT2Config's default size (12 layers, d_model 768, 12 heads, vocab 50257); its
tokenizer is the toy's word-level vocabulary padded with unused tokens to 50257, so every name
is one token and the IOI datasets build.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import report


def make_model_dir(out: Path, tiny: bool) -> Path:
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from circuit_plasticity.training.pretrain import toy_tokenizer

    toy = toy_tokenizer().backend
    vocab = dict(toy.get_vocab())
    size = 512 if tiny else 50257
    for i in range(len(vocab), size):
        vocab[f"<unused_{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = toy.pre_tokenizer, toy.decoder
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>", pad_token="<pad>"
    )
    fast.save_pretrained(out)
    cfg = GPT2Config(vocab_size=size, bos_token_id=0, eos_token_id=0, n_positions=128)
    if tiny:
        cfg.n_layer, cfg.n_embd, cfg.n_head = 2, 64, 4
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    return out


def main() -> None:
    from circuit_plasticity.api import run_study
    from circuit_plasticity.models.load import default_device
    from circuit_plasticity.study.experiment import AnalysisSpec, ExperimentSpec

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--n-train", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    model_dir = make_model_dir(work / "gpt2-random", args.tiny)
    out = args.out or work / "run"
    spec = ExperimentSpec(
        model=str(model_dir),
        seeds=list(range(args.seeds)),
        n_train=args.n_train,
        lr=1e-4,
        batch_size=16,
        eval_every_steps=50,
        analysis=AnalysisSpec(n=100 if args.tiny else 200),
    )
    start = time.perf_counter()
    run_study(spec, out, progress=False)
    seconds = time.perf_counter() - start
    metrics = json.loads(
        json.dumps(
            {"device": default_device(), "tiny": args.tiny, "seeds": args.seeds, "n_train": args.n_train}
        )
    )
    if torch.cuda.is_available():
        metrics["gpu"] = torch.cuda.get_device_name(0)
    report(
        "gpu_study", {**metrics, "study_s": round(seconds, 1), "report": str(out / "report" / "index.html")}
    )


if __name__ == "__main__":
    main()
