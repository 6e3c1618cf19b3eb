"""The circuit file (edge_circuit.json) held to its specification, docs/edge-circuit-format.md:
EAP-IG's layout (MLP nodes in every model), MIB's score sign, EAP-IG's pruning, MIB's sizes.
EAP-IG's and MIB's own code read these files and gave the same numbers (recorded there)."""

from __future__ import annotations

import json

import pytest
import torch

from circuit_plasticity.analysis.attribution import edge_attribution, edge_patched_scores
from circuit_plasticity.analysis.graph import Graph
from circuit_plasticity.analysis.mib import MIB_FRACTIONS, mib_curves, mib_edge_counts, mib_selection
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


def eap_ig_edge_count(n_layers: int, n_heads: int, parallel: bool = False) -> int:
    """EAP-IG's `Graph.from_model`, counted: per layer each head's q, k, v from every earlier
    node, the MLP from every earlier node (and its own layer's heads unless parallel), the
    logits from every node."""
    upstream, total = 1, 0
    for _ in range(n_layers):
        total += 3 * n_heads * upstream
        total += upstream if parallel else upstream + n_heads
        upstream += n_heads + 1
    return total + upstream


@pytest.fixture(scope="module")
def toy():
    loaded = load_model("toy-ioi", "cpu")
    batch = task_batch(loaded, "ioi", n=40, seed=5)
    graph = edge_attribution(loaded.model, batch, ig_steps=2)
    return loaded, batch, graph


def test_attention_only_graph_is_written_in_eap_igs_layout_with_mibs_sign(toy, tmp_path):
    _, _, graph = toy
    assert graph.n_edges == 193 and not graph.has_mlp  # ours: toy-ioi has no MLPs
    graph.in_graph = graph.top_n(30)
    data = graph.to_json(tmp_path / "c.json")
    assert len(data["edges"]) == eap_ig_edge_count(3, 4) == 262
    assert {"m0", "m1", "m2", "input", "logits"} <= set(data["nodes"])
    table = graph.edge_table().set_index("edge").score
    for name, edge in data["edges"].items():
        if name in table.index:
            assert edge["score"] == pytest.approx(-table[name], abs=0)  # MIB: higher = more important
        else:  # an MLP edge of EAP-IG's layout: nothing computes there
            sender, receiver = name.split("->")
            assert sender.startswith("m") or receiver.startswith("m")
            assert edge == {"score": 0.0, "in_graph": False}
    assert data["circuit_plasticity"]["attention_only"] and data["circuit_plasticity"]["score_sign"] == "mib"
    back = Graph.from_json(tmp_path / "c.json")
    assert back.n_edges == 193 and torch.equal(back.scores, graph.scores)
    assert torch.equal(back.in_graph, graph.pruned()[0])


def test_gpt2_style_layout_counts_match_eap_ig(tiny_gpt2_dir):
    loaded = load_model(str(tiny_gpt2_dir), "cpu")
    g = Graph.from_model(loaded.model)
    assert g.n_edges == g.eap_ig_layout().n_edges == eap_ig_edge_count(2, 4)
    assert Graph(2, 4, 8, parallel_attn_mlp=True).n_edges == eap_ig_edge_count(2, 4, parallel=True)


def _reaches(graph: Graph, edges: torch.Tensor) -> set[str]:
    """Nodes with a path input -> node -> logits through `edges`: a plain search, both ways."""
    names = graph.forward_names
    succ: dict[str, set[str]] = {n: set() for n in [*names, "logits"]}
    for f, b in edges.nonzero().tolist():
        succ[names[f]].add(graph.backward_names[b].split("<")[0])
    forward, todo = {"input"}, ["input"]
    while todo:
        for nxt in succ[todo.pop()]:
            if nxt not in forward:
                forward.add(nxt)
                todo.append(nxt)
    backward, changed = {"logits"}, True
    while changed:
        changed = False
        for n, outs in succ.items():
            if n not in backward and outs & backward:
                backward.add(n)
                changed = True
    return (forward & backward) - {"logits"}


@pytest.mark.parametrize("seed", range(6))
def test_pruning_keeps_exactly_the_nodes_on_a_path_from_input_to_logits(seed):
    g = Graph(3, 3, 8, has_mlp=bool(seed % 2))
    mask = (
        torch.rand(g.n_forward, g.n_backward, generator=torch.Generator().manual_seed(seed)) < 0.08
    ) & g.real
    edges, nodes = g.pruned(mask)
    kept = {g.forward_names[i] for i in nodes.nonzero().flatten().tolist()}
    assert kept == _reaches(g, mask)
    for f, b in edges.nonzero().tolist():  # every edge left joins two kept nodes
        assert g.forward_names[f] in kept
        assert g.backward_names[b] == "logits" or g.backward_names[b].split("<")[0] in kept
    assert g.pruned(edges)[0].equal(edges)  # a fixed point


def test_pruning_changes_nothing_the_circuit_computes(toy):
    loaded, batch, graph = toy
    masks = [graph.top_n(n) for n in (3, 12, 40)]
    pruned = [graph.pruned(m)[0] for m in masks]
    assert any(not torch.equal(a, b) for a, b in zip(masks, pruned, strict=True))
    scores = edge_patched_scores(loaded.model, batch, masks + pruned)
    assert torch.allclose(scores[:3], scores[3:], atol=1e-5)


def test_mib_sizes_and_selection(toy):
    _, _, graph = toy
    full = graph.eap_ig_layout()
    assert (
        mib_edge_counts(262) == [int(p * 262) for p in MIB_FRACTIONS] == [0, 0, 1, 2, 5, 13, 26, 52, 131, 262]
    )
    ours = graph.edge_table().set_index("edge").score
    signed = mib_selection(full, 26, absolute=False)
    # before pruning MIB's signed top-n is our n most negative scores (MLP edges score 0)
    chosen = {full.edge_name(f, b) for f, b in signed.nonzero().tolist()}
    assert chosen <= set(ours.sort_values().index[:26])
    absolute = mib_selection(full, 26, absolute=True)
    chosen = {full.edge_name(f, b) for f, b in absolute.nonzero().tolist()}
    assert chosen <= set(ours.abs().sort_values(ascending=False).index[:26])


def test_mib_curves_follow_mibs_definition(toy):
    loaded, batch, graph = toy
    curve, summary = mib_curves(loaded.model, batch, graph)
    for method in ("mib_signed", "mib_absolute"):
        part = curve[curve.method == method]
        assert list(part.edges) == mib_edge_counts(262)
        assert part.faithfulness.iloc[-1] == pytest.approx(1, abs=1e-5)
        assert part.faithfulness.iloc[0] == pytest.approx(0, abs=1e-6)  # int(0.001 x 262) = 0 edges
        f, x = part.faithfulness.tolist(), list(MIB_FRACTIONS)
        row = summary[summary.method == method].iloc[0]
        trapezoids = sum((x[i + 1] - x[i]) * (f[i] + f[i + 1]) / 2 for i in range(9))
        assert row.cpr == pytest.approx(trapezoids) and row.n_edges == 262
        assert row.cmd == pytest.approx(
            sum((x[i + 1] - x[i]) * (abs(1 - f[i]) + abs(1 - f[i + 1])) / 2 for i in range(9))
        )
    # one point by hand: the 131 edges of largest |score| over all 262 (MLP edges last), patched
    names = graph.edge_table().assign(a=lambda t: t.score.abs()).sort_values("a", ascending=False)
    mask = torch.zeros_like(graph.real)
    for e in names.edge[:131]:
        s, r = e.split("->")
        mask[graph.forward_index(s), graph.backward_index(r)] = True
    scores = edge_patched_scores(
        loaded.model, batch, [graph.real.clone(), torch.zeros_like(mask), mask]
    ).mean(1)
    want = float((scores[2] - scores[1]) / (scores[0] - scores[1]))
    got = curve[(curve.method == "mib_absolute") & (curve.fraction == 0.5)].faithfulness.iloc[0]
    assert got == pytest.approx(want, abs=1e-5)


def test_reads_eap_igs_own_unversioned_files(toy, tmp_path):
    _, _, graph = toy
    data = graph.to_json()
    del data["circuit_plasticity"]  # as EAP-IG's to_json writes it: MIB's sign, MLP nodes always
    back = Graph.from_json(json.loads(json.dumps(data)))
    assert back.has_mlp and back.n_edges == 262
    f, b = graph.layout_index(back)
    assert torch.equal(back.scores[f[:, None], b[None, :]], graph.scores)
