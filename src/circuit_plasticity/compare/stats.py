"""Statistics over seeds: a mean and its t-based 95 % confidence interval."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# two-sided 97.5 % Student-t quantiles for 1..30 degrees of freedom
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_interval(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of finite values; a single value gets no interval (NaN bounds)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan"), 0
    mean = float(x.mean())
    if x.size == 1:
        return mean, float("nan"), float("nan"), 1
    t = _T975[min(x.size - 1, len(_T975)) - 1]
    half = t * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half, int(x.size)


def over_seeds(rows: pd.DataFrame, by: list[str], value: str = "value") -> pd.DataFrame:
    """Collapse a table with a `seed` column to mean, ci_low, ci_high, n per group."""
    out = []
    for key, group in rows.groupby(by, sort=False, dropna=False):
        mean, low, high, n = t_interval(group[value].tolist())
        out.append(
            {
                **dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)),
                "mean": mean,
                "ci_low": low,
                "ci_high": high,
                "n_seeds": n,
            }
        )
    return pd.DataFrame(out)
