"""Tidy tables: long format, one measure per row (written by `fileio.write_table`)."""

from __future__ import annotations

import pandas as pd


def long_table(wide: pd.DataFrame, id_cols: list[str]) -> pd.DataFrame:
    """Wide per-head table -> rows of (ids..., measure, value)."""
    value_cols = [c for c in wide.columns if c not in id_cols]
    return wide.melt(id_vars=id_cols, value_vars=value_cols, var_name="measure", value_name="value")
