"""MIB's circuit-track evaluation of our EAP-IG scores, as MIB's own code computes it.

MIB (Mueller et al. 2025, the circuit track's `evaluate_area_under_curve`) takes the graph as
EAP-IG builds it (MLP nodes in every model), scores in its sign (higher = more important:
minus ours), and for each fraction p in 0.1 %, 0.2 %, 0.5 %, 1 %, 2 %, 5 %, 10 %, 20 %, 50 %,
100 % keeps the int(p x edges) edges of largest score, signed or absolute (`--absolute`),
prunes them as EAP-IG does and patches every other edge with the corrupted run. Faithfulness
f = (m(C) - m(empty)) / (m(M) - m(empty)); `area_under` (CPR) and `area_from_1` (CMD) are
trapezoids of f and |1 - f| over p. MIB reads CPR from the signed run and CMD from the
absolute one; both areas of both modes are given here.

The selection happens in EAP-IG's layout and is carried back to ours for edge patching: an
attention-only model's extra MLP edges score 0 and compute nothing, so the patched function
is the same (docs/edge-circuit-format.md). Our own curve (`attribution.faithfulness_curve`)
keeps its sizes (max(1, round(p x edges)) of our graph, by |score|).
"""

from __future__ import annotations

import pandas as pd
import torch

from circuit_plasticity.analysis.attribution import edge_patched_scores
from circuit_plasticity.analysis.graph import Graph, area_under
from circuit_plasticity.tasks.encode import TaskBatch

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)
MODES = {"mib_signed": False, "mib_absolute": True}  # method -> MIB's --absolute


def mib_edge_counts(n_edges: int) -> list[int]:
    """MIB's circuit sizes: int(p x edges) of EAP-IG's graph (0 at the smallest p on small models)."""
    return [int(p * n_edges) for p in MIB_FRACTIONS]


def mib_selection(full: Graph, n: int, absolute: bool) -> torch.Tensor:
    """MIB's top-n circuit over EAP-IG's layout: the n real edges of largest MIB score (minus
    ours) or |score|, then EAP-IG's pruning."""
    scores = -full.scores
    if absolute:
        scores = scores.abs()
    scores = torch.where(full.real, scores, torch.tensor(-torch.inf))
    order = torch.argsort(scores.flatten(), descending=True)
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[order[:n]] = True
    edges, _ = full.pruned(mask.view_as(scores))
    return edges


@torch.no_grad()
def mib_curves(
    model, batch: TaskBatch, graph: Graph, memory_budget_bytes: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(curve: method, fraction, edges, faithfulness; summary: method, area_under, area_from_1,
    cpr, cmd) for both of MIB's modes, by edge patching on `model`."""
    full = graph.eap_ig_layout()
    counts = mib_edge_counts(full.n_edges)
    labels, masks = [], []
    for method, absolute in MODES.items():
        for p, n in zip(MIB_FRACTIONS, counts, strict=True):
            chosen = mib_selection(full, n, absolute)
            labels.append((method, p, n, int(chosen.sum())))
            masks.append(graph.from_layout(full, chosen))
    everything, nothing = graph.real.clone(), torch.zeros_like(graph.real)
    means = edge_patched_scores(model, batch, [everything, nothing, *masks], memory_budget_bytes).mean(1)
    full_score, empty = float(means[0]), float(means[1])
    span = full_score - empty
    rows = [
        {
            "method": method,
            "fraction": p,
            "edges": n,
            "edges_after_pruning": kept,
            "score": float(means[2 + i]),
            "faithfulness": (float(means[2 + i]) - empty) / span if span else float("nan"),
        }
        for i, (method, p, n, kept) in enumerate(labels)
    ]
    curve = pd.DataFrame(rows)
    summary = []
    for method in MODES:
        f = curve[curve.method == method].faithfulness.tolist()
        under = area_under(list(MIB_FRACTIONS), f)
        from_1 = area_under(list(MIB_FRACTIONS), [abs(1 - v) for v in f])
        summary.append(
            {
                "method": method,
                "cpr": under,
                "cmd": from_1,
                "model_score": full_score,
                "corrupted_score": empty,
                "n_edges": full.n_edges,
            }
        )
    return curve, pd.DataFrame(summary)
