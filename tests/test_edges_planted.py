"""The nodes-or-edges measure on a planted edge change (tests/planted_edges.py).

Truth, from the construction (written before running): the rewired model computes the same
function as the base; its EAP-IG graph is the base graph with the names of a0.h0 and a0.h1
swapped; so every top circuit that holds both heads keeps its node set while its edges through
a1.h0's query change: "edges changed, nodes kept". A null change (the same model again) changes
nothing: no edge change."""

from __future__ import annotations

import pytest
import torch
from planted_edges import planted_pair, swap_names

from circuit_plasticity.analysis.attribution import edge_attribution
from circuit_plasticity.analysis.graph import mib_sizes
from circuit_plasticity.analysis.metrics import evaluate
from circuit_plasticity.compare.edges import TRACK_PERCENTS, change_of, circuit_nodes, graph_overlap, reading
from circuit_plasticity.compare.stats import t_interval
from circuit_plasticity.training.evaluate import task_batch


@pytest.fixture(scope="module")
def planted():
    out = []
    for seed in (0, 1, 2):
        base, rewired = planted_pair(seed)
        batch = task_batch(base, "ioi", n=40, seed=seed)
        out.append(
            (
                base,
                rewired,
                batch,
                edge_attribution(base.model, batch, 5),
                edge_attribution(rewired.model, batch, 5),
            )
        )
    return out


def test_the_rewired_graph_is_the_base_graph_with_the_two_heads_swapped(planted):
    for base, rewired, batch, gb, gr in planted:
        assert torch.equal(evaluate(base.model, batch)["score"], evaluate(rewired.model, batch)["score"])
        tb, tr = gb.edge_table().set_index("edge").score, gr.edge_table().set_index("edge").score
        swapped = tb.rename(index=swap_names).reindex(tr.index)
        assert (tr - swapped).abs().max() <= 1e-5 * tb.abs().max()
        # C reads A in the base (B only through the norm's coupling of all coordinates)
        assert abs(tb["a0.h0->a1.h0<q>"]) > 5 * abs(tb["a0.h1->a1.h0<q>"])


def test_edges_changed_nodes_kept_and_a_null_change_reads_as_none(planted):
    changes, nulls = [], []
    for _, _, _, gb, gr in planted:
        rows = graph_overlap(gb, gr)
        for pct, n in zip(TRACK_PERCENTS, mib_sizes(gb.n_edges, TRACK_PERCENTS), strict=True):
            nodes = circuit_nodes(gb, gb.top_n(n))
            if ("a0.h0" in nodes) == ("a0.h1" in nodes):  # the swap maps the node set to itself
                value = next(
                    r["value"] for r in rows if r["measure"] == "node_jaccard" and r["percent"] == pct
                )
                assert value == 1.0
        changes.append(change_of(rows))
        nulls.append(change_of(graph_overlap(gb, gb)))
    assert all(n == {"edge_change": 0.0, "node_change": 0.0, "edge_minus_node": 0.0} for n in nulls)
    excess = {
        k: t_interval([c[k] - n[k] for c, n in zip(changes, nulls, strict=True)])[:3]
        for k in ("edge_change", "node_change")
    }
    assert reading(excess["edge_change"], excess["node_change"]) == "edges changed, nodes kept"
    zero = t_interval([n["edge_change"] for n in nulls])[:3]
    assert reading(zero, zero) == "no change beyond the null"
