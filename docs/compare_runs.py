"""Two study runs' tables side by side: for each table in A/tables, the largest |difference| of its
numbers against B's, and whether its labels and missing values agree (a code change that should
leave a study's results alone, checked on the study itself).

Run: python docs/compare_runs.py RUN_A RUN_B
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import pandas as pd


def main(a: pathlib.Path, b: pathlib.Path) -> None:
    for f in sorted((a / "tables").glob("*.parquet")):
        g = b / "tables" / f.name
        if not g.exists():
            print(f"{f.name:40s} missing in {b}")
            continue
        x, y = pd.read_parquet(f), pd.read_parquet(g)
        if x.shape != y.shape:
            print(f"{f.name:40s} shapes differ: {x.shape} against {y.shape}")
            continue
        num = x.select_dtypes("number").columns
        words = [c for c in x.columns if c not in num]
        labels = all((x[c].astype(str).values == y[c].astype(str).values).all() for c in words)
        diff = np.nanmax(np.abs(x[num].to_numpy(float) - y[num].to_numpy(float)), initial=0.0)
        nans = bool((x[num].isna().values == y[num].isna().values).all())
        print(f"{f.name:40s} max |difference| {diff:.2e}; labels equal {labels}; missing values equal {nans}")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]))
