"""Circuit discovery and evaluation on the shipped toy model."""

from __future__ import annotations

import pytest
import torch

from circuit_plasticity.analysis.ablation import group_means, knockout, knockout_each_head
from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.analysis.faithfulness import circuit_score, evaluate_circuit
from circuit_plasticity.analysis.hooks import head_labels
from circuit_plasticity.analysis.pipeline import analyze_model
from circuit_plasticity.components import Component
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-ioi")


@pytest.fixture(scope="module")
def batch(toy):
    return task_batch(toy, "ioi", n=120, seed=5, split="test")


@pytest.fixture(scope="module")
def analysis(toy, batch):
    return analyze_model(toy, batch)


def test_circuit_json_round_trip(analysis, tmp_path):
    analysis.circuit.save(tmp_path / "c.json")
    back = Circuit.load(tmp_path / "c.json")
    assert back == analysis.circuit and back.head_set()


def test_full_circuit_is_fully_faithful_and_empty_circuit_is_the_ablated_model(toy, batch):
    everything = set(head_labels(toy.model))
    scores = evaluate_circuit(toy.model, batch, everything)
    assert scores.faithfulness == pytest.approx(1.0, abs=1e-6) and scores.sparsity == 1.0
    means = group_means(toy.model, batch)
    nothing = circuit_score(toy.model, batch, set(), means)
    assert nothing == pytest.approx(float(knockout(toy.model, batch, sorted(everything), means).mean()))


def test_single_knockouts_equal_joint_knockout_of_one_head(toy, batch):
    means = group_means(toy.model, batch)
    table = knockout_each_head(toy.model, batch, means, heads_per_pass=5)
    for lay, head in [(0, 1), (1, 0), (2, 3)]:
        row = table[(table["layer"] == lay) & (table["head"] == head)].iloc[0]
        joint = knockout(toy.model, batch, [(lay, head)], means).mean()
        assert row.knockout_score == pytest.approx(float(joint), abs=1e-5)


def test_minimality_is_the_drop_from_removing_each_head(toy, batch, analysis):
    keep = analysis.circuit.head_set()
    means = group_means(toy.model, batch)
    f_c = circuit_score(toy.model, batch, keep, means)
    for name, share in analysis.scores.knockout_drop.items():
        lay, head = Component.parse(name)
        without = circuit_score(toy.model, batch, keep - {(lay, head)}, means)
        drop = (f_c - without) / analysis.scores.model_score
        assert share == pytest.approx(drop, abs=1e-5)


def test_discovered_circuit_explains_most_of_the_behaviour(analysis):
    assert analysis.circuit.heads, "discovery found no heads"
    assert 0.5 < analysis.scores.faithfulness < 1.5
    assert analysis.scores.sparsity < 1.0
    direct = analysis.path_effects[analysis.path_effects.measure == "path_logits"]
    assert torch.tensor(direct.value.values).abs().max() > 0.1


def test_discovered_circuit_has_the_model_card_roles(analysis):
    """docs/toy-model.md: 1.0 is the main name mover, 0.1 reads S2 at END and suppresses S."""
    roles = {h.key: h.role for h in analysis.circuit.heads}
    assert roles.get((1, 0)) == "name_mover"
    assert roles.get((0, 1)) == "s_suppressor"
    strongest = min(analysis.circuit.heads, key=lambda h: h.effect)
    assert strongest.key == (1, 0)
