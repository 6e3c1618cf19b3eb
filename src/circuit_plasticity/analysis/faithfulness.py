"""Circuit evaluation: faithfulness, completeness, minimality, sparsity.

Everything outside the circuit is mean-ablated (per-template means over the counterfactual
distribution), and the circuit's score F(C) is compared with the model's F(M).
- faithfulness = F(C) / F(M) (Wang et al. also report |F(M) - F(C)|);
- completeness: for each role class K of the circuit, |F(C \\ K) - F(M \\ K)| / F(M): a complete
  circuit loses what the model loses when both lose K;
- minimality: for every head v, (F(C) - F(C \\ {v})) / F(M); the circuit is minimal at
  threshold t if every head's share is at least t (the study states no threshold: ours is a
  parameter, default 1 %);
- sparsity: the share of the model's heads in the circuit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuit_plasticity.analysis.ablation import group_means, knockout
from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.analysis.hooks import head_labels
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]


@dataclass
class CircuitScores:
    model_score: float
    circuit_score: float
    faithfulness: float
    abs_gap: float
    completeness_gap: float
    minimality: dict[str, float]
    minimal: bool
    sparsity: float
    minimality_threshold: float

    def as_row(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, dict)}


@torch.no_grad()
def circuit_score(model, batch: TaskBatch, keep: set[Head], means=None) -> float:
    """F(C): mean score with every head outside `keep` mean-ablated."""
    outside = [h for h in head_labels(model) if h not in keep]
    return (
        float(knockout(model, batch, outside, means).mean())
        if outside
        else float(task_score(end_logits(model(batch.tokens), batch), batch).mean())
    )


@torch.no_grad()
def evaluate_circuit(
    model, batch: TaskBatch, circuit: Circuit | set[Head], minimality_threshold: float = 0.01
) -> CircuitScores:
    keep = circuit.head_set() if isinstance(circuit, Circuit) else set(circuit)
    means = group_means(model, batch)
    f_model = float(task_score(end_logits(model(batch.tokens), batch), batch).mean())
    f_circuit = circuit_score(model, batch, keep, means)
    scale = max(abs(f_model), 1e-6)
    classes: dict[str, set[Head]] = {}
    if isinstance(circuit, Circuit):
        for h in circuit.heads:
            classes.setdefault(h.role, set()).add(h.key)
    gaps = []
    for members in classes.values():
        f_c_minus = circuit_score(model, batch, keep - members, means)
        f_m_minus = float(knockout(model, batch, sorted(members), means).mean())
        gaps.append(abs(f_c_minus - f_m_minus) / scale)
    minimality = {
        f"{lay}.{head}": (f_circuit - circuit_score(model, batch, keep - {(lay, head)}, means)) / scale
        for lay, head in sorted(keep)
    }
    return CircuitScores(
        model_score=f_model,
        circuit_score=f_circuit,
        faithfulness=f_circuit / f_model if f_model else float("nan"),
        abs_gap=abs(f_model - f_circuit),
        completeness_gap=max(gaps) if gaps else 0.0,
        minimality=minimality,
        minimal=all(v >= minimality_threshold for v in minimality.values()),
        sparsity=len(keep) / len(head_labels(model)),
        minimality_threshold=minimality_threshold,
    )
