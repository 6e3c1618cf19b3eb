"""The nodes-or-edges finding (issue 21) of an existing study directory, with the study's own
functions (`track_edges`, `edge_findings`, `seed_pair_findings`, `combine_seeds`), for a run
made before edge tracking existed. Each seed's phases and analyses are copied to a scratch
directory (the run is not modified); seeds run on separate processes.

Run: python benchmarks/edge_finding_of_run.py RUN_DIR [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def one_seed(seed_dir: str, scratch: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from circuit_plasticity.models.load import load_model
    from circuit_plasticity.study.edge_tracking import edge_findings, track_edges
    from circuit_plasticity.study.findings import all_checkpoints, phase_checkpoints
    from circuit_plasticity.study.judge import JudgeOptions, SeedModels, seed_batch
    from circuit_plasticity.training.loop import RunDir

    src, dst = Path(seed_dir), Path(scratch) / Path(seed_dir).name
    seed = int(src.name.split("-")[1])
    for part in ("phases", "analysis"):
        shutil.copytree(src / part, dst / part)
    run = RunDir(dst)
    base = load_model("toy-ioi")
    batch = seed_batch(base, JudgeOptions(), seed)
    models = SeedModels(seed=seed, **phase_checkpoints(run, "toy-ioi"), checkpoints=all_checkpoints(run))
    return edge_findings(track_edges(models, base, batch, dst / "compare", 0))


if __name__ == "__main__":
    import numpy as np
    import pandas as pd

    from circuit_plasticity.compare.verdicts import combine_seeds
    from circuit_plasticity.study.edge_tracking import seed_pair_findings

    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seeds = sorted((args.run / "seeds").glob("seed-*"))
    with tempfile.TemporaryDirectory() as tmp, ProcessPoolExecutor(args.workers) as pool:
        found = list(pool.map(one_seed, [str(s) for s in seeds], [tmp] * len(seeds)))
        rows = [
            {"seed": int(s.name.split("-")[1]), "measure": k, "value": v, "ci_low": np.nan, "ci_high": np.nan}
            for s, f in zip(seeds, found, strict=True)
            for k, v in f.items()
        ]
        pairs = seed_pair_findings({int(s.name.split("-")[1]): Path(tmp) / s.name / "compare" for s in seeds})
        table = pd.concat([pd.DataFrame(rows), pairs.drop(columns="method")], ignore_index=True)
    summary = combine_seeds(table, min_seeds=3)
    print(json.dumps(summary.to_dict("records"), indent=1, default=float))
