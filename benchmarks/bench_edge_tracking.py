"""Cost of the per-checkpoint EAP-IG graphs of edge tracking (issue 21) in the default study:
one seed's `track_edges` in a fresh process (1 thread, as a study worker), its wall time and
the process's peak RSS against the same process before tracking (model and prompts loaded).

Run: python benchmarks/bench_edge_tracking.py [--run SEED_DIR] [--every 0 1]
SEED_DIR is a seed of the default study (seeds/seed-0 of `run --out DIR`), its phase analyses
included: the final checkpoints' graphs are read from them, as the study does. Without --run,
seed 0 of the default protocol is trained first (about 35 s) and every graph is computed."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import report

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, shutil, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from circuit_plasticity.models.load import load_model
from circuit_plasticity.study.edge_tracking import edge_checkpoints, track_edges
from circuit_plasticity.study.findings import all_checkpoints, phase_checkpoints
from circuit_plasticity.study.judge import JudgeOptions, SeedModels, seed_batch
from circuit_plasticity.training.loop import RunDir
run, every = Path(sys.argv[1]), int(sys.argv[2])
out = run / f"compare-bench-{every}"  # beside the seed's analysis/, whose final graphs it reuses
shutil.rmtree(out, ignore_errors=True)
base = load_model("toy-ioi")
batch = seed_batch(base, JudgeOptions(), 0)
checkpoints = all_checkpoints(RunDir(run))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
seed = SeedModels(seed=0, **phase_checkpoints(RunDir(run), "toy-ioi"), checkpoints=checkpoints)
track_edges(seed, base, batch, out, every)
wall = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"every": every, "graphs": len(edge_checkpoints(checkpoints, every)) + 1,
                  "wall_s": wall, "rss_before_mb": before / 1024, "rss_peak_mb": peak / 1024}))
shutil.rmtree(out, ignore_errors=True)
"""


def train_seed0(out: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    code = (
        "from circuit_plasticity.study.experiment import ExperimentSpec;"
        "from circuit_plasticity.training.loop import run_protocol;"
        f"run_protocol(ExperimentSpec().train_spec(0), {str(out)!r}, progress=False)"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, help="a trained seed directory (seeds/seed-0 of a run)")
    parser.add_argument("--every", type=int, nargs="+", default=[0])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train_seed0(Path(tmp) / "seed-0")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
        for every in args.every:
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(run), str(every)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(result, flush=True)
            report("edge_tracking", result)
