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
from circuit_plasticity.analysis.patching import patch_each_set
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
def ablated_scores(model, batch: TaskBatch, ablate_sets: list[list[Head]], means) -> list[float]:
    """Mean score with each set of heads mean-ablated jointly: one batched pass for all sets."""
    scores = patch_each_set(model, batch, batch.tokens, means, ablate_sets)
    return [float(s) for s in scores.mean(1)]


@torch.no_grad()
def evaluate_circuit(
    model, batch: TaskBatch, circuit: Circuit | set[Head], minimality_threshold: float = 0.01
) -> CircuitScores:
    keep = circuit.head_set() if isinstance(circuit, Circuit) else set(circuit)
    labels = head_labels(model)
    means = group_means(model, batch)
    f_model = float(task_score(end_logits(model(batch.tokens), batch), batch).mean())
    scale = max(abs(f_model), 1e-6)

    def outside(kept: set[Head]) -> list[Head]:
        return [h for h in labels if h not in kept]

    classes: dict[str, set[Head]] = {}
    if isinstance(circuit, Circuit):
        for h in circuit.heads:
            classes.setdefault(h.role, set()).add(h.key)
    members = sorted(keep)
    sets = [outside(keep)]  # F(C)
    sets += [outside(keep - {h}) for h in members]  # F(C \ {v})
    sets += [outside(keep - k) for k in classes.values()]  # F(C \ K)
    sets += [sorted(k) for k in classes.values()]  # F(M \ K)
    scores = ablated_scores(model, batch, sets, means)
    f_circuit = scores[0]
    without = scores[1 : 1 + len(members)]
    c_minus = scores[1 + len(members) : 1 + len(members) + len(classes)]
    m_minus = scores[1 + len(members) + len(classes) :]
    gaps = [abs(c - m) / scale for c, m in zip(c_minus, m_minus, strict=True)]
    minimality = {
        f"{lay}.{head}": (f_circuit - w) / scale for (lay, head), w in zip(members, without, strict=True)
    }
    return CircuitScores(
        model_score=f_model,
        circuit_score=f_circuit,
        faithfulness=f_circuit / f_model if f_model else float("nan"),
        abs_gap=abs(f_model - f_circuit),
        completeness_gap=max(gaps) if gaps else 0.0,
        minimality=minimality,
        minimal=all(v >= minimality_threshold for v in minimality.values()),
        sparsity=len(keep) / len(labels),
        minimality_threshold=minimality_threshold,
    )
