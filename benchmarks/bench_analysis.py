"""The whole single-model analysis of one toy checkpoint (metrics, head profile, path-patching
circuit discovery, circuit evaluation, EAP-IG and its edge-patched MIB curve), timed at the
`full` depth (and at `fast`); the baseline is the same analysis done the plain
way: no cache-reusing fast path, and one full forward pass per patched head (or head set).

Run: python benchmarks/bench_analysis.py
"""

from __future__ import annotations

import time

import torch
from common import report

from circuit_plasticity.analysis import fastpath, patching
from circuit_plasticity.analysis.pipeline import analyze_model
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    loaded = load_model("toy-ioi")
    batch = task_batch(loaded, "ioi", n=160, seed=0)
    with torch.no_grad():
        analyze_model(loaded, batch)  # warm-up
        ours = min(timed(lambda: analyze_model(loaded, batch)) for _ in range(2))
        fast = min(timed(lambda: analyze_model(loaded, batch, depth="fast")) for _ in range(2))
        original, supported = patching._chunks, fastpath.supported
        patching._chunks = lambda items, size: original(items, 1)  # one head (or set) per forward pass
        fastpath.supported = lambda model: False
        try:
            looped = timed(lambda: analyze_model(loaded, batch))
        finally:
            patching._chunks, fastpath.supported = original, supported
    report(
        "single_model_analysis",
        {
            "model": "toy-ioi",
            "prompts": 160,
            "ours_s": round(ours, 2),
            "ours_fast_depth_s": round(fast, 2),
            "plain_s": round(looped, 2),
            "speedup": round(looped / ours, 2),
        },
    )
