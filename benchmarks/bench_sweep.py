"""Sweep throughput: the same tiny points run one after the other in one process, against the
local executor (a process pool sized to the cores), and Ray's overhead per point on a local
cluster (Ray's time minus the local executor's, per point; Ray's time includes starting and
stopping the cluster). Each point is a 1-seed study, so it uses one core and the pool runs
cores of them at once.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sweep.py [--points 4]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import report

from circuit_plasticity.sweep import executors
from circuit_plasticity.sweep.run import point_dir
from circuit_plasticity.sweep.spec import load_sweep

BASE = f"base: {Path(__file__).resolve().parent.parent / 'experiments' / 'tiny-study.yaml'}\n"


def jobs(sweep, out: Path) -> list[executors.Job]:
    return [
        executors.Job(p.name, p.spec_json(), point_dir(out, p.name), executors.job_cpus(p.spec))
        for p in sweep.points
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=4)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    fractions = [round((i + 1) / args.points, 3) for i in range(args.points)]
    spec = root / "sweep.yaml"
    spec.write_text(BASE + f"grid:\n  fraction: {fractions}\n")
    sweep = load_sweep(spec)
    quiet = lambda _: None  # noqa: E731
    try:
        start = time.perf_counter()
        for job in jobs(sweep, root / "sequential"):  # one after the other, in this process
            executors.run_point(job.spec_json, str(job.out))
        sequential = time.perf_counter() - start

        start = time.perf_counter()
        executors.run_local(jobs(sweep, root / "local"), quiet)
        local = time.perf_counter() - start

        start = time.perf_counter()
        executors.run_ray(jobs(sweep, root / "ray"), quiet)
        ray = time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(
        "sweep",
        {
            "points": args.points,
            "cores": os.cpu_count(),
            "point": "toy-ioi, 1 seed, 32 prompts x 1 epoch per phase, analysis n 20, no repair",
            "sequential_s": round(sequential, 1),
            "local_s": round(local, 1),
            "local_speedup": round(sequential / local, 2),
            "ray_s": round(ray, 1),
            "ray_overhead_per_point_s": round((ray - local) / args.points, 1),
        },
    )


if __name__ == "__main__":
    main()
