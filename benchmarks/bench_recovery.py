"""Neuroplasticity, measured: steps and seconds for a subject-poisoned toy model to get back to
95 % in-distribution IOI accuracy under clean retraining, against a randomly initialised model
of the same architecture learning the same clean data from scratch.

Run: python benchmarks/bench_recovery.py
"""

from __future__ import annotations

import time

import torch
from common import report

from circuit_plasticity.analysis.metrics import evaluate
from circuit_plasticity.models.load import load_model
from circuit_plasticity.models.native import build_native
from circuit_plasticity.tasks.build import build_dataset
from circuit_plasticity.tasks.encode import encode_examples
from circuit_plasticity.tasks.poison import poison
from circuit_plasticity.training.data import train_tensors
from circuit_plasticity.training.loss import next_token_loss

TARGET, BATCH, LR, CHECK = 0.95, 32, 3e-4, 10


def train_until(
    model, data, eval_batch, max_steps: int, stop_below: bool = False
) -> tuple[int, float, float]:
    """Steps, seconds and last accuracy when accuracy reaches TARGET (or falls to 1 - TARGET)."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    start, step, acc = time.perf_counter(), 0, float("nan")
    while step < max_steps:
        idx = torch.randint(len(data), (BATCH,), generator=g)
        model.train()
        loss = next_token_loss(model(data.tokens[idx]), data.tokens[idx], data.loss_mask[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % CHECK == 0:
            model.eval()
            acc = float(evaluate(model, eval_batch)["correct"].mean())
            if (acc <= 1 - TARGET) if stop_below else (acc >= TARGET):
                return step, time.perf_counter() - start, acc
    return -1, time.perf_counter() - start, acc


if __name__ == "__main__":
    loaded = load_model("toy-ioi")
    tok = loaded.tokenizer
    examples, _ = build_dataset("ioi", 2000, 0, tok, split="train")
    clean = train_tensors(encode_examples(examples, tok), tok.pad_id)
    bad = train_tensors(encode_examples(poison(examples, "subject", 1.0), tok), tok.pad_id)
    held, _ = build_dataset("ioi", 300, 99, tok, split="train")  # fresh prompts, same pools
    eval_batch = encode_examples(held, tok)

    poison_steps, _, _ = train_until(loaded.model, bad, eval_batch, 2000, stop_below=True)
    recover_steps, recover_s, _ = train_until(loaded.model, clean, eval_batch, 2000)
    scratch = build_native(loaded.config, seed=0)
    scratch_steps, scratch_s, scratch_acc = train_until(scratch, clean, eval_batch, 6000)
    report(
        "neuroplasticity_recovery",
        {
            "target_accuracy": TARGET,
            "poison_steps_to_flip": poison_steps,
            "retrain_steps": recover_steps,
            "retrain_s": round(recover_s, 1),
            "scratch_steps": scratch_steps,
            "scratch_s": round(scratch_s, 1),
            "scratch_final_accuracy": round(scratch_acc, 3),
            "note": "-1 means the target was not reached within the step cap",
        },
    )
