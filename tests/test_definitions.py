"""Each analysis definition held to a known answer by construction or to a slow reference."""

from __future__ import annotations

import copy
import itertools
import math

import pandas as pd
import pytest
import torch

from circuit_plasticity.analysis.ablation import group_means
from circuit_plasticity.analysis.circuit import Circuit, CircuitHead
from circuit_plasticity.analysis.classes import DIRECT_ROLES, classify_heads, direct_role, with_query_path
from circuit_plasticity.analysis.discovery import DiscoveryConfig, discover_circuit
from circuit_plasticity.analysis.faithfulness import circuit_score, evaluate_circuit, normalized_faithfulness
from circuit_plasticity.analysis.hooks import head_labels
from circuit_plasticity.analysis.metrics import evaluate
from circuit_plasticity.analysis.profile import head_profile
from circuit_plasticity.components import Component, component_name
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-ioi")


@pytest.fixture(scope="module")
def batch(toy):
    return task_batch(toy, "ioi", n=60, seed=11, split="test")


def _head(name: str) -> tuple[int, int]:
    return Component.parse(name)


def test_normalized_faithfulness_is_zero_for_empty_and_one_for_full_circuit(toy, batch):
    full = evaluate_circuit(toy.model, batch, set(head_labels(toy.model)), minimality_steps=0)
    empty = evaluate_circuit(toy.model, batch, set(), minimality_steps=0)
    assert full.normalized_faithfulness == 1.0 and empty.normalized_faithfulness == 0.0
    means = group_means(toy.model, batch)
    assert empty.empty_score == pytest.approx(circuit_score(toy.model, batch, set(), means), abs=1e-5)
    assert full.empty_score == empty.empty_score


def test_normalized_faithfulness_is_nan_when_the_model_scores_like_the_empty_circuit():
    assert math.isnan(normalized_faithfulness(1.0, 2.0, 2.0))
    assert normalized_faithfulness(1.5, 3.0, 0.0) == 0.5


def test_normalized_faithfulness_matches_separate_scores(toy, batch):
    keep = {(1, 0), (1, 1), (0, 1)}
    scores = evaluate_circuit(toy.model, batch, keep, minimality_steps=0)
    means = group_means(toy.model, batch)
    f_c = circuit_score(toy.model, batch, keep, means)
    f_e = circuit_score(toy.model, batch, set(), means)
    f_m = circuit_score(toy.model, batch, set(head_labels(toy.model)), means)
    assert scores.normalized_faithfulness == pytest.approx((f_c - f_e) / (f_m - f_e), abs=1e-4)


def _slow_gap(toy, batch, means, keep: set, v, k: set) -> float:
    """|F(C \\ (K u {v})) - F(C \\ K)| by two plain, separate knockouts."""
    without = circuit_score(toy.model, batch, keep - k - {v}, means)
    return abs(without - circuit_score(toy.model, batch, keep - k, means))


def test_minimality_equals_an_exhaustive_slow_reference_on_a_small_circuit(toy, batch):
    """With 3 heads, two greedy rounds visit every K of C \\ {v}: the search is exhaustive."""
    keep = {(0, 1), (1, 0), (1, 1)}
    scores = evaluate_circuit(toy.model, batch, keep, minimality_steps=2)
    means = group_means(toy.model, batch)
    f_model = scores.model_score
    for v in keep:
        rest = sorted(keep - {v})
        subsets = [set(c) for r in range(len(rest) + 1) for c in itertools.combinations(rest, r)]
        slow = max(_slow_gap(toy, batch, means, keep, v, k) for k in subsets)
        name = component_name(v)
        assert scores.minimality_abs[name] == pytest.approx(slow, abs=1e-4)
        assert scores.minimality[name] == pytest.approx(slow / abs(f_model), abs=1e-4)


def test_minimality_covers_empty_and_role_class_and_reports_its_k(toy, batch):
    heads = [
        CircuitHead(1, 0, "name_mover", "end", -0.3),
        CircuitHead(1, 1, "name_mover", "end", -0.2),
        CircuitHead(0, 1, "s_suppressor", "end", -0.2),
        CircuitHead(0, 2, "s_suppressor", "end", -0.1),
        CircuitHead(2, 1, "direct_effect", "end", -0.1),
    ]
    circuit = Circuit("ioi", "toy", heads, [], 12)
    scores = evaluate_circuit(toy.model, batch, circuit, minimality_steps=1)
    means = group_means(toy.model, batch)
    keep = circuit.head_set()
    for h in heads:
        name = component_name(h.key)
        same = {g.key for g in heads if g.role == h.role} - {h.key}
        value = scores.minimality_abs[name]
        assert value >= _slow_gap(toy, batch, means, keep, h.key, set()) - 1e-4
        assert value >= _slow_gap(toy, batch, means, keep, h.key, same) - 1e-4
        k = {_head(n) for n in scores.minimality_k[name]}
        assert value == pytest.approx(_slow_gap(toy, batch, means, keep, h.key, k), abs=1e-4)


# --- discovery and the head taxonomy -------------------------------------------------------


def _edited(toy, edit) -> torch.nn.Module:
    model = copy.deepcopy(toy.model)
    with torch.no_grad():
        edit(model)
    return model


def _scale_unembedding(factor: float):
    def edit(model) -> None:
        model.unembed.W_U.mul_(factor)
        model.unembed.b_U.mul_(factor)

    return edit


def _records(model, toy, batch) -> dict:
    table, _ = head_profile(model, toy.tokenizer, batch)
    return {(int(r["layer"]), int(r["head"])): r for r in table.to_dict("records")}


@pytest.fixture(scope="module")
def base_discovery(toy, batch):
    score = float(evaluate(toy.model, batch)["score"].mean())
    config = DiscoveryConfig(reference_scale=score)
    return config, discover_circuit(
        toy.model, batch, config=config, attention=_records(toy.model, toy, batch)
    )


def test_tripled_unembedding_triples_effects_and_keeps_every_member(toy, batch, base_discovery):
    config, base = base_discovery
    model = _edited(toy, _scale_unembedding(3.0))
    tripled = discover_circuit(model, batch, config=config, attention=_records(model, toy, batch))
    assert tripled.circuit.meta["model_score"] == pytest.approx(
        3 * base.circuit.meta["model_score"], rel=1e-4
    )
    assert tripled.circuit.meta["threshold"] == base.circuit.meta["threshold"]
    direct = base.effects[base.effects.measure == "path_logits"].value.to_numpy()
    direct3 = tripled.effects[tripled.effects.measure == "path_logits"].value.to_numpy()
    assert direct3 == pytest.approx(direct, abs=1e-5)  # shares of the own score: unchanged
    assert base.circuit.head_set() <= tripled.circuit.head_set()


def test_own_score_threshold_is_the_default_and_scales_with_the_model():
    assert DiscoveryConfig(share=0.1).threshold(-5.0) == pytest.approx(0.5)
    assert DiscoveryConfig(share=0.1, reference_scale=2.0).threshold(-5.0) == pytest.approx(0.2)


def test_sign_flipped_model_keeps_members_and_upstream_heads(toy, batch, base_discovery):
    """Negating W_U negates every logit difference: a poisoned-like model whose name movers now
    push S over IO. Discovery must still search upstream of them and find the same heads."""
    config, base = base_discovery
    model = _edited(toy, _scale_unembedding(-1.0))
    flipped = discover_circuit(model, batch, config=config, attention=_records(model, toy, batch))
    assert flipped.circuit.meta["model_score"] == pytest.approx(-base.circuit.meta["model_score"], rel=1e-4)
    assert flipped.circuit.head_set() == base.circuit.head_set()
    upstream = {h.key for h in base.circuit.heads if h.position != "end" or h.role == "s_inhibition"}
    assert upstream, "the toy circuit has heads upstream of the direct stage"
    assert upstream == {
        h.key for h in flipped.circuit.heads if h.position != "end" or h.role == "s_inhibition"
    }
    roles = {h.key: h.role for h in flipped.circuit.heads}
    for h in base.circuit.heads:
        if h.role == "name_mover":
            assert roles[h.key] == "negative_name_mover"


def test_negated_name_mover_is_a_negative_name_mover_never_a_backup(toy, batch):
    """W_O of name mover 1.0 times -1: it still reads IO at END but now lowers IO - S."""
    lay, head = 1, 0

    def negate(model) -> None:
        model.blocks[lay].attn.W_O[head].mul_(-1.0)

    model = _edited(toy, negate)
    table, score = head_profile(model, toy.tokenizer, batch)
    records = {(int(r["layer"]), int(r["head"])): r for r in table.to_dict("records")}
    found = discover_circuit(model, batch, attention=records)
    table = classify_heads(with_query_path(table, found.effects), score)
    roles = table[(table["layer"] == lay) & (table["head"] == head)].roles.iloc[0].split(",")
    assert "negative_name_mover" in roles and "backup_name_mover" not in roles
    assert {h.key: h.role for h in found.circuit.heads}[(lay, head)] == "negative_name_mover"


@pytest.mark.parametrize(
    ("io", "s2", "push", "copy_score", "expected"),
    [
        (0.5, 0.1, 1.0, 0.9, "name_mover"),
        (0.5, 0.1, 1.0, 0.1, None),  # reads IO but does not copy names
        (0.5, 0.1, 1.0, None, "name_mover"),  # copy score not measured
        (0.5, 0.1, -1.0, 0.0, "negative_name_mover"),
        (0.1, 0.5, 1.0, None, "s_suppressor"),
        (0.1, 0.5, -1.0, None, "s_mover"),
        (0.05, 0.05, 1.0, None, None),
    ],
)
def test_direct_role_table(io, s2, push, copy_score, expected):
    assert direct_role(io, s2, push, 0.15, copy_score, 0.5) == expected


def test_heads_table_and_circuit_name_direct_heads_by_the_same_rule(toy, batch, base_discovery):
    """Where both give a head a direct role, they agree whenever DLA and the path effect agree
    in sign (the rule is one function; only the measured effect differs)."""
    _, base = base_discovery
    table, score = head_profile(toy.model, toy.tokenizer, batch)
    table = classify_heads(with_query_path(table, base.effects), score)
    rows = {(int(r.layer), int(r.head)): r for r in table.itertuples()}
    for h in base.circuit.heads:
        row = rows[h.key]
        table_roles = set(row.roles.split(",")) & set(DIRECT_ROLES)
        if h.position == "end" and h.role in DIRECT_ROLES and table_roles and (row.dla > 0) == (h.effect < 0):
            assert table_roles == {h.role}
        if h.role == "s_inhibition":
            assert "s_inhibition" in row.roles.split(",")


@pytest.mark.parametrize(
    ("io", "dla", "backup"),
    [
        (0.5, -1.0, False),  # negative name mover: never a backup
        (0.5, 1.0, False),  # name mover
        (0.05, 0.1, True),  # no direct role, DLA grows without the name movers
    ],
)
def test_backup_is_a_head_without_a_direct_role_whose_dla_grows(io, dla, backup):
    row = {"layer": 2, "head": 0, "attn_end_io": io, "attn_end_s2": 0.0, "dla": dla, "copy_score": 1.0}
    table = pd.DataFrame([row | {"dla_gain_without_name_movers": 0.5}])
    roles = classify_heads(table, model_score=2.0).roles.iloc[0].split(",")
    assert ("backup_name_mover" in roles) == backup
