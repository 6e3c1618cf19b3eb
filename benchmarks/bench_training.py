"""Training throughput: our phase runner against a bare PyTorch loop, same model, same data,
same forward/backward/AdamW step, side by side in one process.

Run: python benchmarks/bench_training.py
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
from common import report

from circuit_plasticity.models.load import load_model
from circuit_plasticity.spec import from_mapping
from circuit_plasticity.tasks.build import build_dataset
from circuit_plasticity.tasks.encode import encode_examples
from circuit_plasticity.training.data import train_tensors
from circuit_plasticity.training.loop import run_protocol
from circuit_plasticity.training.loss import next_token_loss
from circuit_plasticity.training.protocol import TrainSpec

N, BATCH, EPOCHS = 1024, 32, 6


def bare_loop() -> float:
    loaded = load_model("toy-ioi")
    model = loaded.model
    model.train()
    examples, _ = build_dataset("ioi", N, 0, loaded.tokenizer, split="train")
    data = train_tensors(encode_examples(examples, loaded.tokenizer), loaded.tokenizer.pad_id)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.0)
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        order = torch.randperm(N, generator=torch.Generator().manual_seed(epoch))
        for k in range(math.ceil(N / BATCH)):
            idx = order[k * BATCH : (k + 1) * BATCH]
            loss = next_token_loss(model(data.tokens[idx]), data.tokens[idx], data.loss_mask[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - start


def ours() -> float:
    spec = from_mapping(
        TrainSpec,
        {
            "eval": {"every_steps": 10_000, "n": 20, "lm_docs": 0},  # only the epoch-end evaluations
            "phases": [{"name": "clean", "data": {"n": N}, "epochs": EPOCHS, "batch_size": BATCH}],
        },
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_protocol(spec, Path(tmp) / "run", progress=False)
        return time.perf_counter() - start


if __name__ == "__main__":
    torch.manual_seed(0)
    bare_loop()  # warm-up: imports, allocator
    bare, mine = [], []
    for _ in range(3):
        bare.append(bare_loop())
        mine.append(ours())
    steps = EPOCHS * math.ceil(N / BATCH)
    b, o = sorted(bare)[1], sorted(mine)[1]
    report(
        "training_throughput",
        {
            "steps": steps,
            "bare_s": round(b, 3),
            "ours_s": round(o, 3),
            "ours_vs_bare_throughput": round(b / o, 3),
            "note": "ours includes loading, data building, an evaluation and a checkpoint at every epoch end",
        },
    )
