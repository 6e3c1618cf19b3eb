"""Each analysis definition held to a known answer by construction or to a slow reference."""

from __future__ import annotations

import itertools
import math

import pytest

from circuit_plasticity.analysis.ablation import group_means
from circuit_plasticity.analysis.circuit import Circuit, CircuitHead
from circuit_plasticity.analysis.faithfulness import circuit_score, evaluate_circuit, normalized_faithfulness
from circuit_plasticity.analysis.hooks import head_labels
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-ioi")


@pytest.fixture(scope="module")
def batch(toy):
    return task_batch(toy, "ioi", n=60, seed=11, split="test")


def _head(name: str) -> tuple[int, int]:
    lay, head = name.split(".")
    return int(lay), int(head)


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
        name = f"{v[0]}.{v[1]}"
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
        name = f"{h.layer}.{h.head}"
        same = {g.key for g in heads if g.role == h.role} - {h.key}
        value = scores.minimality_abs[name]
        assert value >= _slow_gap(toy, batch, means, keep, h.key, set()) - 1e-4
        assert value >= _slow_gap(toy, batch, means, keep, h.key, same) - 1e-4
        k = {_head(n) for n in scores.minimality_k[name]}
        assert value == pytest.approx(_slow_gap(toy, batch, means, keep, h.key, k), abs=1e-4)
