"""Where the default run's time goes: one seed's tasks, each timed on its own, on one thread in
this process, through the same `_task` function the study's worker processes run (train the
seed, analyse each phase, the tables task, the judge task). The study runs 3 seeds' tasks on 2
processes, so its wall time is about 3/2 of the seed's sum plus the judge of all seeds and the
report (the last lines of a `run`).

Run: python benchmarks/bench_stages.py [--seed 0] [--spec experiments/default.yaml]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import report

# the parts inside the tasks, timed where the tasks call them (module, attribute[.method])
PARTS = (
    ("circuit_plasticity.training.loop", "train_step"),
    ("circuit_plasticity.training.evaluation", "Evaluator.__call__"),
    ("circuit_plasticity.study.findings", "cross_model_patch"),
    ("circuit_plasticity.study.findings", "_track"),
    ("circuit_plasticity.study.edge_tracking", "_graph_of"),
    ("circuit_plasticity.study.judge", "method_evidence"),
    ("circuit_plasticity.study.judge", "_repair"),
)


def time_parts(totals: dict[str, float]) -> None:
    """Wrap each of PARTS so that its calls add their wall time to `totals`."""
    for module_name, attribute in PARTS:
        owner = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part)
        inner = getattr(owner, name)

        def timed(*args, _inner=inner, _key=attribute, **kwargs):
            start = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                totals[_key] += time.perf_counter() - start

        setattr(owner, name, timed)


def stage_times(spec_path: str | None, seed: int) -> dict[str, float]:
    import torch

    from circuit_plasticity.study.experiment import _task, load_experiment
    from circuit_plasticity.study.findings import STUDY_PHASES

    torch.set_num_threads(1)
    spec = dataclasses.replace(load_experiment(spec_path), seeds=[seed])
    mine = json.loads(json.dumps(dataclasses.asdict(spec)))
    out = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    times: dict[str, float] = {}
    parts: dict[str, float] = defaultdict(float)
    time_parts(parts)
    kinds = ["train", *(f"analyse:{p}" for p in STUDY_PHASES), "tables", "judge"]
    for kind in kinds:
        before = dict(parts)
        start = time.perf_counter()
        _task(mine, str(out), kind, seed)
        times[kind] = round(time.perf_counter() - start, 2)
        print(f"{kind:20s} {times[kind]:7.1f} s", flush=True)
        for key, total in parts.items():
            if total - before.get(key, 0.0) > 0:
                times[f"{kind} / {key}"] = round(total - before.get(key, 0.0), 2)
                print(f"  {key:30s} {times[f'{kind} / {key}']:7.1f} s", flush=True)
    return times


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spec", default=None, help="a study spec (default: the default study)")
    args = parser.parse_args()
    times = stage_times(args.spec, args.seed)
    total = sum(v for k, v in times.items() if " / " not in k)
    print(f"{'one seed, all tasks':20s} {total:7.1f} s; 3 seeds on 2 processes: about {1.5 * total:.0f} s")
    report("stages", {"seed": args.seed, "spec": args.spec or "default", "seconds": times, "total": total})
