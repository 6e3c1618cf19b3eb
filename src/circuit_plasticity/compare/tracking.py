"""Continuous tracking (beyond the study): one fixed circuit through every checkpoint, and
hysteresis: does retraining from the poisoned model retrace the clean fine-tuning path?"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from circuit_plasticity.analysis.ablation import group_means
from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.analysis.faithfulness import circuit_score
from circuit_plasticity.analysis.heads import head_dla, mlp_direct
from circuit_plasticity.analysis.metrics import clean_end_logits, task_score
from circuit_plasticity.components import component_name
from circuit_plasticity.tasks.encode import TaskBatch


@torch.no_grad()
def circuit_strength(model, batch: TaskBatch, circuit: Circuit) -> list[dict]:
    """The fixed circuit in this model, as long rows (component, layer, head, measure, value):
    the model's score, the circuit's score and faithfulness (component 'circuit') and each
    member's direct effect (measure 'dla')."""
    score = float(task_score(clean_end_logits(model, batch), batch).mean())
    kept = circuit_score(model, batch, circuit.head_set(), group_means(model, batch))
    dla = head_dla(model, batch).mean(0)
    if any(h.head < 0 for h in circuit.heads):  # MLP members: their own direct effect, not a head's
        mlp = mlp_direct(model, batch)[1].mean(0)  # [layers]
    whole = {
        "score": score,
        "circuit_score": kept,
        "faithfulness": kept / score if abs(score) > 1e-9 else float("nan"),
    }
    rows = [
        {"component": "circuit", "layer": None, "head": None, "measure": k, "value": v}
        for k, v in whole.items()
    ]
    for h in circuit.heads:
        value = float(mlp[h.layer] if h.head < 0 else dla[h.layer, h.head])
        rows.append(
            {
                "component": component_name(h.key),
                "layer": h.layer,
                "head": h.head,
                "measure": "dla",
                "value": value,
            }
        )
    return rows


def hysteresis(
    metrics: pd.DataFrame,
    forward: str = "clean",
    backward: str = "retrain",
    measure: str = "clean_score",
    level: float = 0.9,
) -> dict[str, float]:
    """Compare the retrain trajectory with the clean fine-tuning one, step for step.

    steps_to_level: first step at which a phase reaches `level` x the clean phase's final value;
    gap_area: mean |retrain - clean| over the steps both phases share, in units of `measure`.
    """
    fwd = metrics[metrics.phase == forward].sort_values("step")
    bwd = metrics[metrics.phase == backward].sort_values("step")
    if fwd.empty or bwd.empty:
        return {}
    goal = level * float(fwd[measure].iloc[-1])

    def first_step(rows: pd.DataFrame) -> float:
        hit = rows[rows[measure] >= goal]
        return float(hit.step.iloc[0]) if len(hit) else float("nan")

    shared = np.intersect1d(fwd.step.values, bwd.step.values)
    f = fwd.set_index("step").loc[shared, measure].values
    b = bwd.set_index("step").loc[shared, measure].values
    return {
        "level": goal,
        f"{forward}_steps_to_level": first_step(fwd),
        f"{backward}_steps_to_level": first_step(bwd),
        "gap_area": float(np.abs(f - b).mean()) if len(shared) else float("nan"),
        "final_gap": float(bwd[measure].iloc[-1] - fwd[measure].iloc[-1]),
    }
