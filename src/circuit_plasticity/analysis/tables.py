"""Tidy tables: long format, one measure per row (written by `fileio.write_table`)."""

from __future__ import annotations

import pandas as pd


def long_table(wide: pd.DataFrame, id_cols: list[str], of: str | None = None) -> pd.DataFrame:
    """Wide per-component table -> rows of (ids..., measure, value), the one format of every
    per-component table. `of` names a column saying what the values are of (recovery of
    'dla'): its value prefixes the measure ('dla_recovery') and the column goes."""
    if of:
        wide = wide.rename(columns={of: "_of"})
    ids = [*id_cols, *(["_of"] if of else [])]
    value_cols = [c for c in wide.columns if c not in ids]
    out = wide.melt(id_vars=ids, value_vars=value_cols, var_name="measure", value_name="value")
    if of:
        out["measure"] = out["_of"].astype(str) + "_" + out["measure"]
        out = out.drop(columns="_of")
    return out
