"""Shared benchmark helpers: timing with warm-up and repeats, results as JSON lines."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path


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
