"""The per-phase view of a training run: where each phase ended."""

from __future__ import annotations

import pandas as pd

COLUMNS = ["phase", "parent", "step", "clean_accuracy", "clean_score", "poison_success", "lm_loss"]


def phase_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """The last evaluation of each phase, in run order."""
    last = metrics.groupby("phase", sort=False).tail(1)
    return last[[c for c in COLUMNS if c in last.columns]].round(3).reset_index(drop=True)
