"""The default `run` (the whole toy-ioi study, 3 seeds) on this tree against a baseline commit,
side by side: each in a fresh process, alternating; wall times and the ratio current /
baseline. Issue 14 asks that the restructure leave the default run no slower.

Run: python benchmarks/bench_default_run.py --baseline 7744b46 [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import report

ROOT = Path(__file__).resolve().parents[1]


def one_run(src: Path, out: Path) -> float:
    """Wall seconds of `run --out out` with `src` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(src), "CIRCUIT_PLASTICITY_DEVICE": "cpu"}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "circuit_plasticity", "run", "--out", str(out), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"run failed with {src}:\n{done.stderr[-3000:]}")
    return wall


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True, help="git ref of the code to compare against")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base_tree), args.baseline],
            check=True,
        )
        try:
            walls: dict[str, list[float]] = {"baseline": [], "current": []}
            for r in range(args.rounds):
                for name, src in (("baseline", base_tree / "src"), ("current", ROOT / "src")):
                    wall = one_run(src, Path(tmp) / f"{name}-{r}")
                    walls[name].append(wall)
                    print(f"{name} round {r}: {wall:.1f} s", flush=True)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False
            )
    best = {k: min(v) for k, v in walls.items()}
    report(
        "default_run_vs_baseline",
        {
            "baseline": args.baseline,
            "rounds": args.rounds,
            "baseline_s": [round(w, 1) for w in walls["baseline"]],
            "current_s": [round(w, 1) for w in walls["current"]],
            "ratio_current_over_baseline": round(best["current"] / best["baseline"], 3),
        },
    )
