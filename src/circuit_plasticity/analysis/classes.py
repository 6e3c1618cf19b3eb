"""Head classes from measurements, with thresholds as parameters (defaults: docs/analysis.md).

Relative thresholds are shares of the model's own mean logit difference, so the same
defaults serve a toy with a logit difference of 4 and GPT-2 with 3.5 or a fine-tune with 25.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd


@dataclass(frozen=True)
class Thresholds:
    attention: float = 0.15  # attention END->IO (name movers) or END->S2 (S-inhibition)
    copy: float = 0.5  # share of names whose logit the OV circuit puts in the top 5
    direct_share: float = 0.08  # |DLA| as a share of the model's logit difference
    knockout_share: float = 0.08  # |knockout effect| as a share of the logit difference
    duplicate: float = 0.2  # attention S2 -> S1
    induction: float = 0.3
    previous_token: float = 0.3
    backup_share: float = 0.04  # DLA gain, as a share of the score, when the name movers are knocked out

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_THRESHOLDS = Thresholds()


def classify_heads(
    table: pd.DataFrame, model_score: float, th: Thresholds = DEFAULT_THRESHOLDS
) -> pd.DataFrame:
    """Add a `roles` column (comma-joined, '' for none) to a per-head table."""
    scale = max(abs(model_score), 1e-6)
    roles = []
    for _, r in table.iterrows():
        mine = []
        dla = r.get("dla", 0.0) / scale
        if (
            r.get("attn_end_io", 0) >= th.attention
            and dla >= th.direct_share
            and r.get("copy_score", 1.0) >= th.copy
        ):
            mine.append("name_mover")
        if r.get("attn_end_io", 0) >= th.attention and dla <= -th.direct_share:
            mine.append("negative_name_mover")
        if (
            r.get("attn_end_s2", 0) >= th.attention
            and "name_mover" not in mine
            and r.get("knockout_effect", 0) / scale <= -th.knockout_share
        ):
            mine.append("s_inhibition")
        if "name_mover" not in mine and r.get("dla_gain_without_name_movers", 0) / scale >= th.backup_share:
            mine.append("backup_name_mover")
        if r.get("attn_s2_s1", 0) >= th.duplicate:
            mine.append("duplicate_token")
        if r.get("induction", 0) >= th.induction:
            mine.append("induction")
        if r.get("prev_token", 0) >= th.previous_token:
            mine.append("previous_token")
        roles.append(",".join(mine))
    return table.assign(roles=roles)
