"""Head classes from measurements, with thresholds as parameters (defaults: docs/analysis.md).

One taxonomy serves the heads table (here) and the discovered circuit (`discovery.py`): the
roles of heads that write to the logits at END are decided by one function, `direct_role`,
from what the head reads at END and the sign of its direct effect along logit(IO) - logit(S)
(never the model's own sign: a poisoned model with a negative score keeps the same names).
S-inhibition is decided in both by the path through the movers' queries at END (discovery's
stage 2, `path_q_of_s_inhibition_receivers`). A backup name mover is a head with no direct
role of its own (so never a negative name mover) whose DLA grows when the name movers are
knocked out. The table lists every role a head qualifies for; the circuit gives each head the
role of the first stage that selects it.

Greater-Than heads are named by what they read: a year reader attends from END to the start
year YY (Hanna et al.'s attention heads); MLPs are named in the MLP table and the circuit.

Relative thresholds are shares of a reference scale: the model's own |mean logit difference|
by default, or a fixed `reference_scale` (the study passes the base model's), so a model whose
score triples keeps its members.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

DIRECT_ROLES = ("name_mover", "negative_name_mover", "s_suppressor", "s_mover")
QUERY_PATH = "path_q_of_s_inhibition_receivers"  # discovery's stage-2 measure


@dataclass(frozen=True)
class Thresholds:
    attention: float = 0.15  # attention END->IO (name movers), END->S2 (S-inhibition), END->YY
    copy: float = 0.5  # share of names whose logit the OV circuit puts in the top 5
    direct_share: float = 0.08  # |DLA| as a share of the model's logit difference
    duplicate: float = 0.2  # attention S2 -> S1
    induction: float = 0.3
    previous_token: float = 0.3
    backup_share: float = 0.04  # DLA gain, as a share of the score, when the name movers are knocked out
    path_share: float = 0.04  # |path effect through the movers' queries| for S-inhibition (= discovery)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_THRESHOLDS = Thresholds()


def direct_role(
    attn_end_io: float,
    attn_end_s2: float,
    io_minus_s: float,
    attention: float,
    copy_score: float | None = None,
    copy: float = DEFAULT_THRESHOLDS.copy,
) -> str | None:
    """The role of a head that moves the score directly; None when it reads neither name.

    `io_minus_s` is the sign-carrying direct effect along logit(IO) - logit(S) (positive: the
    head raises IO over S). Reading IO and raising it: name mover (if its OV copies names, when
    the copy score is known); reading IO and lowering it: negative name mover; reading S2 and
    raising IO - S: S-suppressor (writes "not S"); reading S2 and lowering it: S mover (copies
    S, as poisoned name movers do)."""
    reads_io = attn_end_io >= attention and attn_end_io >= attn_end_s2
    reads_s2 = attn_end_s2 >= attention and attn_end_s2 > attn_end_io
    if reads_io and io_minus_s > 0:
        return "name_mover" if copy_score is None or copy_score >= copy else None
    if reads_io and io_minus_s < 0:
        return "negative_name_mover"
    if reads_s2:
        return "s_suppressor" if io_minus_s > 0 else "s_mover"
    return None


def _value(row: pd.Series, key: str, default: float | None = 0.0) -> float | None:
    value = row.get(key, default)
    return default if value is None or pd.isna(value) else float(value)


def head_roles(row: pd.Series, own_scale: float, scale: float, th: Thresholds) -> list[str]:
    """Roles of one head-table row; `own_scale` converts the row's shares of the model's own
    score (path columns) to score units, `scale` is the reference for every threshold."""
    mine = []
    dla = _value(row, "dla") or 0.0
    if abs(dla) >= th.direct_share * scale:
        role = direct_role(
            _value(row, "attn_end_io") or 0.0,
            _value(row, "attn_end_s2") or 0.0,
            dla,
            th.attention,
            _value(row, "copy_score", None),
            th.copy,
        )
        if role:
            mine.append(role)
    query_path = _value(row, QUERY_PATH) or 0.0
    if abs(query_path) * own_scale >= th.path_share * scale:
        mine.append("s_inhibition")
    gain = _value(row, "dla_gain_without_name_movers") or 0.0
    if not set(DIRECT_ROLES) & set(mine) and gain >= th.backup_share * scale:
        mine.append("backup_name_mover")
    if (_value(row, "attn_end_yy") or 0.0) >= th.attention:
        mine.append("year_reader")
    if (_value(row, "attn_s2_s1") or 0.0) >= th.duplicate:
        mine.append("duplicate_token")
    if (_value(row, "induction") or 0.0) >= th.induction:
        mine.append("induction")
    if (_value(row, "prev_token") or 0.0) >= th.previous_token:
        mine.append("previous_token")
    return mine


def classify_heads(
    table: pd.DataFrame,
    model_score: float,
    th: Thresholds = DEFAULT_THRESHOLDS,
    *,
    reference_scale: float | None = None,
) -> pd.DataFrame:
    """Add a `roles` column (comma-joined, '' for none) to a per-head table."""
    own = max(abs(model_score), 1e-6)
    scale = own if reference_scale is None else max(abs(reference_scale), 1e-6)
    roles = [",".join(head_roles(r, own, scale, th)) for _, r in table.iterrows()]
    return table.assign(roles=roles)


def with_query_path(table: pd.DataFrame, effects: pd.DataFrame) -> pd.DataFrame:
    """The heads table with discovery's path effect through the movers' queries (share of the
    model's score) as a column, so the table's S-inhibition is the circuit's."""
    q = effects[effects.measure == QUERY_PATH][["layer", "head", "value"]]
    q = q.rename(columns={"value": QUERY_PATH})
    out = table.drop(columns=[QUERY_PATH], errors="ignore").merge(q, on=["layer", "head"], how="left")
    return out.assign(**{QUERY_PATH: out[QUERY_PATH].fillna(0.0)})


def component_roles(
    model, batch, scale: float, th: Thresholds = DEFAULT_THRESHOLDS
) -> dict[tuple[int, int], str | None]:
    """The direct role of every head and MLP, by the table's rule (what the head reads at END,
    the sign of its DLA, |DLA| >= direct_share x `scale`); None where it has none. The copy
    score is not asked (a role change, not a class, is what comparisons need).
    IOI heads: `direct_role`. Greater-Than heads: year_reader (reads YY, raises the score) or
    negative_year_reader. MLPs: greater_mlp (Greater-Than) / mlp when they raise the score,
    negative_mlp when they lower it."""
    from circuit_plasticity.analysis.heads import component_dla, role_attention
    from circuit_plasticity.analysis.hooks import component_labels

    dla = component_dla(model, batch).mean(0).tolist()
    attention = role_attention(model, batch).set_index(["layer", "head"])
    out: dict[tuple[int, int], str | None] = {}
    for c, d in zip(component_labels(model), dla, strict=True):
        if abs(d) < th.direct_share * max(abs(scale), 1e-6):
            out[c] = None
        elif c[1] < 0:
            out[c] = ("greater_mlp" if batch.task == "greater-than" else "mlp") if d > 0 else "negative_mlp"
        elif batch.task == "ioi":
            row = attention.loc[(c[0], c[1])]
            out[c] = direct_role(float(row.attn_end_io), float(row.attn_end_s2), d, th.attention)
        else:
            reads = float(attention.loc[(c[0], c[1])].attn_end_yy) >= th.attention
            out[c] = None if not reads else ("year_reader" if d > 0 else "negative_year_reader")
    return out
