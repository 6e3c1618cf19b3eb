"""Tidy tables: long format (one measure per row), written atomically as Parquet (or CSV)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from circuit_plasticity.fileio import atomic_path


def long_table(wide: pd.DataFrame, id_cols: list[str]) -> pd.DataFrame:
    """Wide per-head table -> rows of (ids..., measure, value)."""
    value_cols = [c for c in wide.columns if c not in id_cols]
    return wide.melt(id_vars=id_cols, value_vars=value_cols, var_name="measure", value_name="value")


def write_table(path: str | os.PathLike[str], frame: pd.DataFrame, csv: bool = False) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    if csv:
        with atomic_path(path.with_suffix(".csv")) as tmp:
            frame.to_csv(tmp, index=False)
    return path
