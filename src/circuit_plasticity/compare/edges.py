"""Nodes or edges: how much of a reference EAP-IG circuit another model's circuit keeps.

Two graphs of the same model layout (`analysis.graph.Graph`, dense edge scores) are compared at
a few circuit sizes. The top circuit at p % is the `mib_sizes` count of real edges of largest
|score| (`Graph.top_n`, MIB's selection). Definitions (docs/analysis.md, "Nodes or edges"):
- edges: (sender, receiver slot) pairs, so a head's q, k and v inputs are three receivers;
- nodes: the components (heads `a{L}.h{H}` and MLPs `m{L}`) that an edge of the circuit touches,
  as its sender or as the owner of its receiver slot (q/k/v merged). `input` and `logits` are
  not components and are left out (every non-empty circuit touches the logits). This is wider
  than EAP-IG's pruned node set (`Graph.nodes_in_graph`): a node is counted as soon as one
  circuit edge touches it;
- Jaccard |A & B| / |A | B| (1 when both are empty); kept: |R & B| / |R|, the share of the
  reference's set that the other circuit keeps (1 when R is empty);
- Spearman rank correlation of the signed scores of every real edge (average ranks for ties).
"""

from __future__ import annotations

import math

import torch

from circuit_plasticity.analysis.graph import Graph, mib_sizes

TRACK_PERCENTS = (1, 5, 10)  # circuit sizes, % of all edges
MEASURES = ("edge_jaccard", "edge_kept", "node_jaccard", "node_kept")


def circuit_nodes(graph: Graph, mask: torch.Tensor) -> set[str]:
    """Components touched by an edge of `mask` (sender, or the receiver slot's owner)."""
    f, b = (mask.bool() & graph.real).nonzero(as_tuple=True)
    senders = {graph.forward_names[i] for i in f.tolist()}
    receivers = {graph.backward_names[i].split("<")[0] for i in b.tolist()}
    return (senders | receivers) - {"input", "logits"}


def _share(inter: int, whole: int) -> float:
    return inter / whole if whole else 1.0


def spearman_scores(a: torch.Tensor, b: torch.Tensor) -> float:
    """Rank correlation of two score vectors (average ranks for ties); NaN if one is constant."""
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float((ra.pow(2).sum() * rb.pow(2).sum()).sqrt())
    return float((ra * rb).sum()) / den if den > 0 else float("nan")


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based average ranks."""
    order = torch.argsort(x, stable=True)
    sorted_x = x[order]
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=x.dtype)
    # average over runs of ties
    uniq, inverse, counts = torch.unique_consecutive(sorted_x, return_inverse=True, return_counts=True)
    if len(uniq) < len(x):
        sums = torch.zeros(len(uniq), dtype=x.dtype).index_add_(0, inverse, ranks[order])
        ranks[order] = (sums / counts)[inverse]
    return ranks


def check_same_layout(reference: Graph, other: Graph) -> None:
    if reference.forward_names != other.forward_names or reference.backward_names != other.backward_names:
        raise ValueError("the two graphs have different layouts (not the same architecture)")


def graph_overlap(reference: Graph, other: Graph, percents=TRACK_PERCENTS) -> list[dict]:
    """Long rows (measure, percent, value): edge/node Jaccard and kept share of the top circuits
    at each size, and (percent NaN) the Spearman correlation of every edge's score."""
    check_same_layout(reference, other)
    rows = []
    for pct, size in zip(percents, mib_sizes(reference.n_edges, percents), strict=True):
        mr, mo = reference.top_n(size), other.top_n(size)
        inter, union = int((mr & mo).sum()), int((mr | mo).sum())
        nr, no = circuit_nodes(reference, mr), circuit_nodes(other, mo)
        values = {
            "edge_jaccard": _share(inter, union),
            "edge_kept": _share(inter, int(mr.sum())),
            "node_jaccard": _share(len(nr & no), len(nr | no)),
            "node_kept": _share(len(nr & no), len(nr)),
        }
        rows += [{"measure": k, "percent": float(pct), "value": v} for k, v in values.items()]
    real = reference.real
    rows.append(
        {
            "measure": "edge_spearman",
            "percent": float("nan"),
            "value": spearman_scores(reference.scores[real], other.scores[real]),
        }
    )
    return rows


def top_changes(reference: Graph, other: Graph, n: int) -> list[dict]:
    """The `n` real edges whose score moved most from `reference` to `other` (largest
    |other - reference|; ties in the graph's edge order, senders then receiver slots), largest
    first: sender, receiver (the slot's node), input (q/k/v, '' for MLPs and the logits), both
    scores and the change (other - reference)."""
    check_same_layout(reference, other)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    f, b = reference.real.nonzero(as_tuple=True)
    change = (other.scores - reference.scores)[f, b]
    order = torch.argsort(change.abs(), descending=True, stable=True)[:n]
    rows = []
    for i in order.tolist():
        fi, bi = int(f[i]), int(b[i])
        receiver, _, rest = reference.backward_names[bi].partition("<")
        rows.append(
            {
                "sender": reference.forward_names[fi],
                "receiver": receiver,
                "input": rest[:-1],
                "reference_score": float(reference.scores[fi, bi]),
                "score": float(other.scores[fi, bi]),
                "change": float(change[i]),
            }
        )
    return rows


def change_of(rows: list[dict] | None = None, table=None) -> dict[str, float]:
    """Edge change and node change of overlap rows: 1 - Jaccard, averaged over the sizes, and
    their difference (edge change - node change: > 0 when the edges move more than the nodes)."""
    import pandas as pd

    frame = table if table is not None else pd.DataFrame(rows)
    edge = 1 - float(frame[frame.measure == "edge_jaccard"].value.mean())
    node = 1 - float(frame[frame.measure == "node_jaccard"].value.mean())
    return {"edge_change": edge, "node_change": node, "edge_minus_node": edge - node}


def _lower(value: float, low: float) -> float:
    return low if math.isfinite(low) else value


def reading(
    edge_excess: tuple[float, float, float], node_excess: tuple[float, float, float], margin=0.05
) -> str:
    """What moved beyond the null, from (value, ci_low, ci_high) of the edge change's and the
    node change's excess over their null: a change counts when its interval's lower end (the
    value itself without an interval) exceeds `margin` (1 - Jaccard units)."""
    edges = _lower(edge_excess[0], edge_excess[1]) > margin
    nodes = _lower(node_excess[0], node_excess[1]) > margin
    if edges and not nodes:
        return "edges changed, nodes kept"
    if edges and nodes:
        return "nodes and edges changed"
    if nodes:
        return "nodes changed, edges kept"
    return "no change beyond the null"
