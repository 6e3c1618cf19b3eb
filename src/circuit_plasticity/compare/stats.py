"""Statistics for the verdicts: t-intervals over seeds, paired bootstraps over prompts,
Fisher's combination of per-seed p-values.

Every interval here is a 95 % interval. Where seeds are many, the spread over seeds is the
uncertainty that matters (training noise); where they are few, the bootstrap over the held-out
prompts of each seed is the best we have, and the table says which one was used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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
N_BOOT = 1000


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


@dataclass(frozen=True)
class Interval:
    """A point value and its 95 % interval (NaN bounds: no interval could be formed)."""

    value: float
    low: float
    high: float

    @staticmethod
    def nan() -> Interval:
        return Interval(float("nan"), float("nan"), float("nan"))

    @property
    def applicable(self) -> bool:
        return math.isfinite(self.value)

    def excludes_zero(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high) and (self.low > 0 or self.high < 0)


def resample_index(n: int, seed: int = 0, n_boot: int = N_BOOT) -> np.ndarray:
    """[n_boot, n] prompt indices; share one index across every quantity that must stay paired."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def boot_stat(fn: Callable[..., np.ndarray], arrays: Sequence, index: np.ndarray) -> Interval:
    """fn of the prompt means of `arrays` (each [..., n]), with a percentile bootstrap interval.

    All arrays are resampled with the same prompt index, so paired quantities (two models on
    the same prompts) stay paired. `fn` must broadcast: it gets [...] means for the point value
    and [..., n_boot] means for the replicates."""
    data = [as_numpy(a) for a in arrays]
    value = float(fn(*[a.mean(-1) for a in data]))
    reps = np.asarray(fn(*[a[..., index].mean(-1) for a in data]), dtype=float)
    reps = reps[np.isfinite(reps)]
    if not math.isfinite(value) or reps.size < 0.9 * index.shape[0]:
        return Interval(value, float("nan"), float("nan"))
    low, high = np.percentile(reps, [2.5, 97.5])
    return Interval(value, float(low), float(high))


def boot_mean(x, index: np.ndarray) -> Interval:
    """Mean of per-prompt values with a percentile bootstrap interval."""
    return boot_stat(lambda m: m, [x], index)


def boot_ratio(num, den, index: np.ndarray) -> Interval:
    """mean(num) / mean(den), resampled together (paired prompts).

    Not applicable (NaN) when the denominator's own interval includes zero: a ratio to a
    change that is within noise means nothing."""
    if not boot_mean(den, index).excludes_zero():
        return Interval.nan()
    return boot_stat(lambda a, b: a / b, [num, den], index)


def permutation_p(observed: float, null: Sequence[float]) -> float:
    """P(null >= observed) with the +1 correction (never exactly 0)."""
    null = np.asarray(null, dtype=float)
    return float((1 + (null >= observed).sum()) / (1 + null.size))


def fisher_combine(pvalues: Sequence[float]) -> float:
    """Fisher's method: -2 sum ln p ~ chi2 with 2k degrees of freedom under the joint null.

    The chi2 survival function for even degrees of freedom has the closed form
    exp(-x/2) sum_{i<k} (x/2)^i / i!, so no SciPy is needed."""
    p = [min(max(float(v), 1e-300), 1.0) for v in pvalues if v is not None and math.isfinite(v)]
    if not p:
        return float("nan")
    half = -sum(math.log(v) for v in p)  # x / 2
    term, total = 1.0, 1.0
    for i in range(1, len(p)):
        term *= half / i
        total += term
    return float(min(1.0, math.exp(-half) * total))
