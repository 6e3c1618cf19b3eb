"""Per-head comparisons of two or three models: effect ratios, recovery, circuit overlap.

The verdicts' evidence (with its null controls) lives in compare/evidence.py; these tables are
what the report draws per head.
"""

from __future__ import annotations

import pandas as pd

from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.components import component_name

Head = tuple[int, int]


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def circuit_overlap(a: Circuit, b: Circuit) -> dict[str, float]:
    def edges(c: Circuit) -> set:
        return {(e.sender, e.receiver, e.input) for e in c.edges}

    return {"node_jaccard": jaccard(a.head_set(), b.head_set()), "edge_jaccard": jaccard(edges(a), edges(b))}


def per_head_change(before: pd.DataFrame, after: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Join two per-head tables on (layer, head): before, after, difference and ratio."""
    joined = before[["layer", "head", measure]].merge(
        after[["layer", "head", measure]], on=["layer", "head"], suffixes=("_before", "_after")
    )
    b, a = joined[f"{measure}_before"], joined[f"{measure}_after"]
    return joined.assign(measure=measure, change=a - b, ratio=a / b.where(b.abs() > 1e-9))


def amplification(
    base: pd.DataFrame,
    tuned: pd.DataFrame,
    base_circuit: Circuit,
    tuned_circuit: Circuit,
    measure: str = "dla",
) -> tuple[pd.DataFrame, dict]:
    table = per_head_change(base, tuned, measure)
    table["in_base_circuit"] = [(r.layer, r.head) in base_circuit.head_set() for r in table.itertuples()]
    members = table[table.in_base_circuit]
    summary = {
        "circuit_members": len(members),
        "members_grown": int((members.change > 0).sum()),
        "median_member_ratio": float(members.ratio.median()) if len(members) else float("nan"),
        "joined": sorted(component_name(c) for c in tuned_circuit.head_set() - base_circuit.head_set()),
        "left": sorted(component_name(c) for c in base_circuit.head_set() - tuned_circuit.head_set()),
    }
    return table, summary


def recovery(
    reference: pd.DataFrame,
    poisoned: pd.DataFrame,
    retrained: pd.DataFrame,
    measure: str = "dla",
    min_change: float = 1e-3,
) -> pd.DataFrame:
    """Per-head recovery = 1 - |retrained - reference| / |poisoned - reference| (1: fully back,
    0: still poisoned, < 0: moved further away); NaN where poisoning changed the head by less
    than min_change. The reference is the clean fine-tune the poison phase started from."""
    key = ["layer", "head"]
    t = reference[key + [measure]].rename(columns={measure: "reference"})
    t = t.merge(poisoned[key + [measure]].rename(columns={measure: "poisoned"}), on=key)
    t = t.merge(retrained[key + [measure]].rename(columns={measure: "retrained"}), on=key)
    moved = (t.poisoned - t.reference).abs()
    rec = 1 - (t.retrained - t.reference).abs() / moved.where(moved >= min_change)
    return t.assign(measure=measure, recovery=rec)
