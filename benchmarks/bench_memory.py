"""`analyze` of a GPT-2-small-sized model (124M parameters, random weights, 12 layers, d_model
768, vocabulary 50257) in a subprocess: peak resident memory and wall time.

Goals (issue 11): peak memory at --n 200 (fast depth) at most 4 GB; time at --n 40 with the
fast depth under 5 minutes on 2 CPU cores; full depth recorded. The reference is the issue's
measurement of the previous code on this model: --n 200 killed for memory on a 24 GiB machine
after 15 minutes, --n 40 unfinished after 15 minutes at a 12 GB peak.

Run: python benchmarks/bench_memory.py [--full] [--runs fast200,fast40]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import random_gpt2_dir, report

ROOT = Path(__file__).resolve().parents[1]


def build_model(out: Path) -> Path:
    """A GPT2Config() (GPT-2 small, vocabulary 50257) model with random weights, no download."""
    return random_gpt2_dir(out, vocab_size=50257)


def run_analyze(model: Path, n: int, depth: str, threads: int = 2) -> dict:
    """One `analyze` in a fresh process: wall seconds and that process's peak RSS (GB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CIRCUIT_PLASTICITY_DEVICE": "cpu"}
    with tempfile.TemporaryDirectory() as out:
        cmd = [str(Path(sys.executable).parent / "circuit-plasticity"), "analyze", str(model), "--out", out]
        cmd += ["--n", str(n), "--depth", depth]
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if done.returncode:
        print(done.stderr[-3000:], file=sys.stderr)
    print(done.stdout[-1500:])
    plan_lines = [line for line in done.stderr.splitlines() if line.startswith("[")]
    return {
        "n": n,
        "depth": depth,
        "ok": done.returncode == 0,
        "wall_s": round(wall, 1),
        # ru_maxrss of children is the largest so far; runs go largest-first or are read alone
        "peak_rss_gb": round(peak_kb / 1024**2, 2) if peak_kb > before else None,
        "plan": plan_lines,
        "summary": done.stdout.strip().splitlines()[-1:] if done.stdout else [],
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", default="fast200,fast40", help="comma list of <depth><n>")
    parser.add_argument("--model-dir", default=str(Path(tempfile.gettempdir()) / "gpt2-small-random"))
    args = parser.parse_args()
    model = build_model(Path(args.model_dir))
    for run in args.runs.split(","):
        depth, n = run[:4], int(run[4:])
        result = run_analyze(model, n, depth)
        report("analyze_gpt2_small_random", {"model": "GPT2Config() random, 124M", "threads": 2, **result})
