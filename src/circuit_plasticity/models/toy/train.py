"""Pretrain the embedded toy model from scratch: deterministic for a seed, minutes on 2 cores."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from circuit_plasticity.models.native import TOY_CONFIG, build_native
from circuit_plasticity.models.store import NATIVE_FORMAT, save_model_dir
from circuit_plasticity.models.toy.corpus import documents, vocabulary_texts
from circuit_plasticity.models.toy.tokenizer import word_level_tokenizer
from circuit_plasticity.tasks.tokenizer import TextTokenizer
from circuit_plasticity.training.loss import next_token_loss, pad_batch


@dataclass
class ToyTrainConfig:
    seed: int = 0
    steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    eval_every: int = 500


def lr_at(step: int, cfg: ToyTrainConfig) -> float:
    """Linear warmup, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def toy_tokenizer() -> TextTokenizer:
    return TextTokenizer.wrap(word_level_tokenizer(vocabulary_texts()), "toy-ioi")


def heldout_ioi_batch(tok: TextTokenizer, n: int = 400, seed: int = 12345):
    """Zero-shot IOI on held-out names and templates (the split the fine-tuning never sees)."""
    from circuit_plasticity.tasks.build import build_dataset
    from circuit_plasticity.tasks.encode import encode_examples

    examples, _ = build_dataset("ioi", n, seed=seed, tokenizer=tok, split="test")
    return encode_examples(examples, tok)


def train_toy(cfg: ToyTrainConfig, out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    from tqdm import tqdm

    from circuit_plasticity.analysis.metrics import evaluate, summarize

    torch.manual_seed(cfg.seed)
    tok = toy_tokenizer()
    model_cfg = dict(TOY_CONFIG, d_vocab=tok.vocab_size)
    model = build_native(model_cfg, seed=cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stream = documents(cfg.seed)
    heldout = heldout_ioi_batch(tok)
    history: list[dict[str, float]] = []
    start = time.time()
    bar = tqdm(range(cfg.steps), desc="toy-ioi pretraining", disable=not progress)
    for step in bar:
        rows = [
            [tok.bos_id, *tok.encode(next(stream))[0]][: model_cfg["n_ctx"]] for _ in range(cfg.batch_size)
        ]
        tokens, mask = pad_batch(rows, tok.pad_id)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = next_token_loss(model(tokens), tokens, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            stats = summarize(evaluate(model, heldout), heldout)
            model.train()
            history.append(
                {
                    "step": step + 1,
                    "loss": float(loss.detach()),
                    "ioi_logit_diff": stats["score"],
                    "ioi_accuracy": stats["correct"],
                }
            )
            bar.set_postfix(
                loss=f"{float(loss):.3f}", ioi_ld=f"{stats['score']:.2f}", ioi_acc=f"{stats['correct']:.2f}"
            )
    result = {"train": asdict(cfg), "seconds": time.time() - start, "history": history}
    if out is not None:
        save_model_dir(
            out,
            model,
            tok.backend,
            model_cfg,
            {"format": NATIVE_FORMAT, "name": "toy-ioi", "pretraining": result},
        )
    return {"model": model, "tokenizer": tok, **result}
