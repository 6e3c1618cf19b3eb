"""Forward passes and wall time of one `analyze_model` (toy-ioi, 160 held-out prompts, the
study's settings) with the per-batch shared runs (analysis/runs.py) and without them, side by
side in one process. A pass is counted each time the model embeds a batch.

Run: python benchmarks/bench_shared_runs.py
"""

from __future__ import annotations

import contextlib
import time

from common import report


def measure(loaded, batch, share: bool) -> tuple[int, float]:
    from circuit_plasticity.analysis import runs
    from circuit_plasticity.analysis.pipeline import analyze_model

    seen = [0]
    handle = loaded.model.embed.register_forward_pre_hook(lambda *_: seen.__setitem__(0, seen[0] + 1))
    original = runs.shared_runs
    if not share:
        runs.shared_runs = contextlib.nullcontext
    try:
        start = time.perf_counter()
        analyze_model(loaded, batch, minimality_steps=0, greedy_curve=False)
        return seen[0], time.perf_counter() - start
    finally:
        runs.shared_runs = original
        handle.remove()


if __name__ == "__main__":
    import torch

    from circuit_plasticity.models.load import load_model
    from circuit_plasticity.training.evaluate import task_batch

    torch.set_num_threads(2)
    loaded = load_model("toy-ioi", device="cpu")
    batch = task_batch(loaded, "ioi", n=160, split="test")
    measure(loaded, batch, True)  # warm-up
    results = {}
    for share in (False, True, False, True):
        passes, seconds = measure(loaded, batch, share)
        results.setdefault(share, []).append((passes, seconds))
    alone, shared = min(s for _, s in results[False]), min(s for _, s in results[True])
    report(
        "shared_runs_analyze_toy_ioi",
        {
            "passes_without": results[False][0][0],
            "passes_with": results[True][0][0],
            "seconds_without": round(alone, 2),
            "seconds_with": round(shared, 2),
            "speedup": round(alone / shared, 3),
        },
    )
