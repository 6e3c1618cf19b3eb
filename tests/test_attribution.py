"""Edge attribution and edge patching against references written from their definitions, on a
tiny random GPT-2 with MLPs (tests/conftest.py) and the attention-only toy."""

from __future__ import annotations

import json

import pytest
import torch
from reference import edge_derivative, shifted_edge_score

from circuit_plasticity.analysis.attribution import (
    edge_attribution,
    edge_patched_scores,
    exact_edge_effects,
    faithfulness_curve,
    spearman,
)
from circuit_plasticity.analysis.graph import Graph, mib_sizes
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2_dir):
    loaded = load_model(str(tiny_gpt2_dir), "cpu")
    return loaded, task_batch(loaded, "ioi", n=12, seed=0)


@pytest.fixture(scope="module")
def eap(gpt2):
    loaded, batch = gpt2
    return edge_attribution(loaded.model, batch, chunk=5)  # chunks of 5, 5, 2 prompts


def test_graph_names_and_causality(gpt2):
    graph = Graph.from_model(gpt2[0].model)  # 2 layers, 4 heads, MLPs
    assert graph.forward_names[:6] == ["input", "a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0"]
    assert graph.backward_names[-1] == "logits" and graph.backward_names[12] == "m0"
    edges = set(graph.edge_table().edge)
    assert {"a0.h1->a1.h2<q>", "input->a0.h0<k>", "a0.h3->m0", "m0->a1.h0<v>", "m1->logits"} <= edges
    assert "a1.h0->a1.h1<q>" not in edges and "m0->m0" not in edges and "m1->a1.h0<q>" not in edges
    # EAP-IG's count: every earlier node into each of 12 head inputs and the MLP, per layer
    assert graph.n_edges == (1 * 12 + 5) + (6 * 12 + 10) + 11
    parallel = Graph(2, 4, 32, parallel_attn_mlp=True)
    assert "a0.h3->m0" not in set(parallel.edge_table().edge)


def test_eap_equals_the_autograd_derivative_edge_by_edge(gpt2, eap):
    """The engine (per-head norm Jacobian, split MLP branch, chunks, hooks) against d/d eps of
    moving only that receiver's input by eps * (corrupt - clean sender output)."""
    loaded, batch = gpt2
    table = eap.edge_table().set_index("edge")
    picks = [
        "input->a0.h1<q>",
        "input->a1.h3<k>",
        "a0.h2->a1.h0<v>",
        "a0.h0->a1.h1<q>",
        "a0.h1->m0",
        "m0->a1.h2<k>",
        "a1.h3->m1",
        "m0->m1",
        "a0.h3->logits",
        "m1->logits",
        "input->logits",
    ]
    for name in picks:
        sender, receiver = name.split("->")
        expected = edge_derivative(loaded.model, batch, sender, receiver)
        assert table.loc[name, "score"] == pytest.approx(expected, rel=1e-3, abs=1e-6), name


def test_mlp_edges_use_the_mlp_branch_not_the_residual(gpt2, eap):
    """An MLP's receiver gradient is that of its own branch: a sender -> m0 score differs from
    the sender's whole downstream effect through the residual at ln2's input."""
    loaded, batch = gpt2
    table = eap.edge_table().set_index("edge")
    whole = edge_derivative(loaded.model, batch, "a0.h1", "m0")
    assert table.loc["a0.h1->m0", "score"] == pytest.approx(whole, rel=1e-3, abs=1e-6)
    residual_effect = edge_derivative(loaded.model, batch, "a0.h1", "logits") + whole
    assert abs(table.loc["a0.h1->m0", "score"] - residual_effect) > 1e-6


def test_all_edges_is_the_clean_run_and_no_edges_the_corrupted_run(gpt2):
    loaded, batch = gpt2
    model = loaded.model
    graph = Graph.from_model(model)
    with torch.no_grad():
        clean = task_score(end_logits(model(batch.tokens), batch), batch)
        corrupt = task_score(end_logits(model(batch.corrupted), batch), batch)
    scores = edge_patched_scores(model, batch, [graph.real.clone(), torch.zeros_like(graph.real)], chunk=5)
    assert torch.allclose(scores[0], clean, atol=1e-5)
    assert torch.allclose(scores[1], corrupt, atol=1e-4)


def test_single_edge_patching_matches_the_reference(gpt2):
    loaded, batch = gpt2
    graph = Graph.from_model(loaded.model)
    names = ["input->a1.h0<q>", "a0.h2->a1.h3<k>", "a0.h0->m0", "m0->logits", "a1.h1->logits"]
    pairs = [(graph.forward_index(n.split("->")[0]), graph.backward_index(n.split("->")[1])) for n in names]
    exact = exact_edge_effects(loaded.model, batch, pairs).set_index("edge")
    with torch.no_grad():
        clean = shifted_edge_score(loaded.model, batch, "input", "logits", 0.0)
        for name in names:
            sender, receiver = name.split("->")
            want = shifted_edge_score(loaded.model, batch, sender, receiver, 1.0) - clean
            assert exact.loc[name, "exact"] == pytest.approx(float(want), rel=1e-3, abs=1e-5), name


def test_eap_and_eap_ig_rank_correlate_with_exact_edge_patching(gpt2):
    loaded, batch = gpt2
    exact = exact_edge_effects(loaded.model, batch).set_index("edge")
    for steps in (0, 5):
        table = edge_attribution(loaded.model, batch, ig_steps=steps).edge_table().set_index("edge")
        joined = exact.join(table)
        for kind, part in (
            ("heads", joined[joined.input != ""]),
            ("mlps", joined[joined.receiver.str[0] == "m"]),
        ):
            assert spearman(part.exact, part.score) > 0.8, (steps, kind)


def test_json_round_trip_in_the_eap_ig_format(gpt2, eap, tmp_path):
    graph = eap
    graph.in_graph = graph.top_n(20)
    data = graph.to_json(tmp_path / "c.json")
    assert set(data) == {"cfg", "nodes", "edges", "circuit_plasticity"}  # EAP-IG reads the first three
    assert set(data["cfg"]) >= {"n_layers", "n_heads", "parallel_attn_mlp", "d_model"}
    assert set(data["edges"]["a0.h1->a1.h2<q>"]) == {"score", "in_graph"}
    assert data["nodes"]["logits"]["in_graph"] and "a1.h3" in data["nodes"]
    pruned, _ = graph.pruned()  # the file holds the circuit as EAP-IG's pruning leaves it
    assert sum(e["in_graph"] for e in data["edges"].values()) == int(pruned.sum()) <= 20
    back = Graph.from_json(json.loads((tmp_path / "c.json").read_text()))
    assert torch.equal(back.in_graph, pruned) and torch.allclose(back.scores, graph.scores)


def test_greedy_circuit_grows_from_the_logits(eap):
    chosen = eap.greedy(15)
    assert int(chosen.sum()) == 15
    inside = {"logits"}
    order = sorted(
        chosen.nonzero().tolist(), key=lambda fb: -abs(float(eap.scores[fb[0], fb[1]]))
    )  # every chosen edge's receiver node is in the circuit once all are added
    nodes = {eap.forward_names[f] for f, _ in order} | inside
    for _, b in order:
        assert eap.backward_names[b].split("<")[0] in nodes


def test_curve_at_mib_sizes_ends_at_one_and_areas_are_consistent(gpt2, eap):
    loaded, batch = gpt2
    curve, summary = faithfulness_curve(loaded.model, batch, eap)
    assert list(curve[curve.method == "top_n"].edges) == mib_sizes(eap.n_edges)
    full = curve[curve.percent == 100]
    assert full.faithfulness.sub(1).abs().max() < 1e-4
    for row in summary.itertuples():  # f <= 1 everywhere would make CPR + CMD the x-range
        part = curve[curve.method == row.method]
        if (part.faithfulness <= 1).all() and (part.faithfulness >= 0).all():
            assert row.cpr + row.cmd == pytest.approx(0.999, abs=1e-6)


def test_attention_only_toy_has_no_mlp_nodes():
    toy = load_model("toy-ioi", "cpu")
    batch = task_batch(toy, "ioi", n=8, seed=0)
    graph = edge_attribution(toy.model, batch, ig_steps=2)
    assert not any(n.startswith("m") for n in graph.forward_names)
    name = "a0.h1->a2.h0<k>"
    expected = (
        sum(edge_derivative_at(toy.model, batch, "a0.h1", "a2.h0<k>", alpha) for alpha in (0.0, 0.5)) / 2
    )
    assert graph.edge_table().set_index("edge").loc[name, "score"] == pytest.approx(
        expected, rel=1e-3, abs=1e-6
    )


def edge_derivative_at(model, batch, sender, receiver, alpha):
    """EAP-IG's integrand: the edge derivative with the input embeddings interpolated."""
    from reference import _sender_output

    with torch.no_grad():
        _, clean = model.run_with_cache(batch.tokens)
        _, corrupt = model.run_with_cache(batch.corrupted)
        x = corrupt["blocks.0.hook_in"] + alpha * (clean["blocks.0.hook_in"] - corrupt["blocks.0.hook_in"])
        delta = _sender_output(model, corrupt, sender) - _sender_output(model, clean, sender)
    node, kind = receiver[:-1].split("<")
    layer, head = (int(p[1:]) for p in node.split("."))
    eps = torch.zeros((), requires_grad=True)
    captured = {}

    def capture(act, hook):
        captured[hook.name] = act.detach().clone()
        return act

    names = [f"blocks.{layer}.attn.hook_{q}" for q in "qkv"]
    with torch.no_grad():
        model.run_with_hooks(
            batch.tokens, fwd_hooks=[("blocks.0.hook_in", lambda a, hook: x)] + [(n, capture) for n in names]
        )
    hooks = [
        ("blocks.0.hook_in", lambda a, hook: x),
        (f"blocks.{layer}.ln1.hook_in", lambda a, hook: a + eps * delta),
    ]
    for q, name in zip("qkv", names, strict=True):

        def restore(act, hook, q=q):
            out = captured[hook.name].clone()
            if q == kind:
                out[:, :, head] = act[:, :, head]
            return out

        hooks.append((name, restore))
    with torch.enable_grad():
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        score = task_score(end_logits(logits, batch), batch).mean()
        (grad,) = torch.autograd.grad(score, eps)
    return float(grad)


def test_scores_do_not_depend_on_the_chunking(gpt2, eap):
    loaded, batch = gpt2
    whole = edge_attribution(loaded.model, batch)  # one chunk of 12
    assert torch.allclose(whole.scores, eap.scores, atol=1e-6, rtol=1e-4)
    tiny_budget = edge_attribution(loaded.model, batch, memory_budget_bytes=1)  # one prompt per chunk
    assert torch.allclose(tiny_budget.scores, eap.scores, atol=1e-6, rtol=1e-4)


def test_fast_depth_finds_a_circuit_by_eap_ig_and_exports_it(tmp_path):
    from circuit_plasticity.analysis.pipeline import analyze_model

    toy = load_model("toy-ioi", "cpu")
    batch = task_batch(toy, "ioi", n=40, seed=3)
    result = analyze_model(toy, batch, depth="fast", memory_budget_bytes=2 * 1024**2)
    assert result.depth == "fast" and result.circuit.meta["method"] == "eap-ig"
    circuit_heads = {f"a{h.layer}.h{h.head}" for h in result.circuit.heads}
    nodes = result.graph.nodes_in_graph()
    assert circuit_heads == {n for n, v in nodes.items() if n.startswith("a") and v}
    found = result.curve[result.curve.edges == int(result.graph.in_graph.sum())]
    assert (found.faithfulness >= 0.8).any() or found.faithfulness.max() == result.curve.faithfulness.max()
    assert 0 < result.scores.sparsity <= 1  # the node-level check of the same circuit ran
    result.write(tmp_path)
    back = Graph.from_json(tmp_path / "edge_circuit.json")
    assert torch.equal(back.in_graph, result.graph.pruned()[0])


def test_analyze_cli_fast_depth_states_its_plan_and_writes_the_mib_file(tmp_path):
    import subprocess
    import sys

    args = ["analyze", "toy-ioi", "--out", str(tmp_path), "--n", "24", "--depth", "fast"]
    done = subprocess.run(
        [sys.executable, "-m", "circuit_plasticity", *args, "--memory-budget", "0.002"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "EAP-IG (5 steps): 24 prompts in" in done.stderr and "chunk(s)" in done.stderr
    assert "CPR" in done.stdout and "CMD" in done.stdout
    data = json.loads((tmp_path / "edge_circuit.json").read_text())
    assert {"cfg", "nodes", "edges"} <= set(data) and any(e["in_graph"] for e in data["edges"].values())
