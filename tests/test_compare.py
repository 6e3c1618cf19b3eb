"""Comparison definitions pinned on constructed cases, and the statistics helpers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from circuit_plasticity.analysis.circuit import Circuit, CircuitHead, Edge
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.compare.changes import circuit_overlap, recovery
from circuit_plasticity.compare.cmap import cross_model_patch, patch_outputs
from circuit_plasticity.compare.evidence import PhaseRuns
from circuit_plasticity.compare.localization import localization_evidence
from circuit_plasticity.compare.stats import t_interval
from circuit_plasticity.compare.tracking import hysteresis
from circuit_plasticity.compare.weights import weight_change
from circuit_plasticity.components import component_name
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch

CHANGED = (2, 1)  # a last-layer head: changing its W_V changes its output and nothing upstream


@pytest.fixture(scope="module")
def pair():
    base = load_model("toy-ioi")
    other = load_model("toy-ioi")
    with torch.no_grad():
        v = other.model.blocks[CHANGED[0]].attn.v.weight  # nn.Linear weight [heads*d_head, d_model]
        d = other.model.cfg.d_head
        rows = slice(CHANGED[1] * d, (CHANGED[1] + 1) * d)
        v[rows] = -3.0 * v[rows]
    return base, other, task_batch(base, "ioi", n=60, seed=3)


def test_cmap_finds_the_one_changed_head(pair):
    base, other, batch = pair
    table = cross_model_patch(other.model, base.model, batch)
    changed = table[(table.layer == CHANGED[0]) & (table["head"] == CHANGED[1])].iloc[0]
    rest = table.drop(changed.name)
    assert abs(changed.score_a - changed.score_b) > 0.05
    assert changed.share == pytest.approx(1.0, abs=1e-4)  # patching it makes the base the other model
    assert rest.delta.abs().max() < 1e-5


def test_localization_finds_the_one_changed_head(pair):
    """Only one last-layer head's W_V changed: its weights carry the whole change (origin view:
    taking them makes the clean model the other one exactly), nothing else carries any."""
    base, other, batch = pair
    runs = PhaseRuns({"clean": base.model, "poisoned": other.model}, batch)
    loc = localization_evidence(runs, k=1, n_random=30, seed=0)
    assert loc.top == [CHANGED] and loc.top_carrier == [CHANGED]
    assert loc.measures["localization_top_share"].value == pytest.approx(1.0, abs=1e-4)
    assert loc.measures["localization_concentration"].value == pytest.approx(1.0, abs=1e-4)
    assert loc.measures["localization_interaction"].value == pytest.approx(0.0, abs=1e-4)
    names, effects = loc.per_component["origin"]["poisoned"]
    assert {n for n, e in zip(names, effects, strict=True) if abs(e) > 1e-6} == {component_name(CHANGED)}
    assert loc.measures["localization_matched_null"].value < 0.5
    assert math.isnan(loc.measures["localization_concentration_excess"].value)  # no control given


def test_output_patching_includes_the_output_projection():
    """A head whose W_O alone changed: z patching cannot see it, output patching must."""
    base, other = load_model("toy-ioi"), load_model("toy-ioi")
    d = other.model.cfg.d_head
    with torch.no_grad():
        other.model.blocks[1].attn.o.weight[:, 0:d] *= 2.5
    batch = task_batch(base, "ioi", n=40, seed=1)
    own = task_score(end_logits(other.model(batch.tokens), batch), batch)
    scores = patch_outputs(base.model, other.model, batch, [[(1, 0)], [(1, 1)], []])
    assert torch.allclose(scores[0], own, atol=1e-4)  # the one changed head carries all of it
    base_own = task_score(end_logits(base.model(batch.tokens), batch), batch)
    assert torch.allclose(scores[1], base_own, atol=1e-4) and torch.allclose(scores[2], base_own, atol=1e-4)


def test_weight_change_is_zero_except_the_changed_head(pair):
    base, other, _ = pair
    table = weight_change(other.model, base.model).set_index("component")
    assert table.loc[component_name(CHANGED), "weight_change_rel"] > 0.1
    assert table.drop(component_name(CHANGED)).weight_change.abs().max() == 0.0


def test_a_model_compared_with_itself_shows_no_change(pair):
    base, _, batch = pair
    table = cross_model_patch(base.model, base.model, batch)
    assert table.delta.abs().max() < 1e-6
    assert weight_change(base.model, base.model).weight_change.abs().max() == 0.0


def test_recovery_definition():
    heads = lambda v: pd.DataFrame({"layer": [0, 0, 1], "head": [0, 1, 0], "dla": v})  # noqa: E731
    base, poisoned = heads([1.0, 2.0, 0.5]), heads([-1.0, 2.0, 1.5])
    full = recovery(base, poisoned, base)  # retrained == base: full recovery where poison moved it
    assert full.recovery.iloc[0] == 1.0 and math.isnan(full.recovery.iloc[1]) and full.recovery.iloc[2] == 1.0
    none = recovery(base, poisoned, poisoned)
    assert none.recovery.iloc[0] == 0.0
    half = recovery(base, poisoned, heads([0.0, 2.0, 1.0]))
    assert half.recovery.iloc[0] == pytest.approx(0.5) and half.recovery.iloc[2] == pytest.approx(0.5)


def test_circuit_overlap():
    a = Circuit(
        "ioi",
        "m",
        [CircuitHead(1, 0, "name_mover", "end", -0.3), CircuitHead(0, 1, "s_inhibition", "end", -0.1)],
        [Edge((1, 0), "logits", "logits"), Edge((0, 1), (1, 0), "q")],
        12,
    )
    b = Circuit(
        "ioi", "m", [CircuitHead(1, 0, "name_mover", "end", -0.5)], [Edge((1, 0), "logits", "logits")], 12
    )
    assert circuit_overlap(a, a) == {"node_jaccard": 1.0, "edge_jaccard": 1.0}
    assert circuit_overlap(a, b) == {"node_jaccard": 0.5, "edge_jaccard": 0.5}


def test_t_interval_by_hand():
    mean, low, high, n = t_interval([1.0, 2.0, 4.0])
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    half = 4.303 * sd / math.sqrt(3)
    assert (mean, n) == (pytest.approx(7 / 3), 3)
    assert low == pytest.approx(7 / 3 - half) and high == pytest.approx(7 / 3 + half)
    assert math.isnan(t_interval([5.0])[1]) and t_interval([float("nan")])[3] == 0


def test_hysteresis_on_a_constructed_trajectory():
    steps = [10, 20, 30, 40]
    metrics = pd.DataFrame(
        {
            "phase": ["clean"] * 4 + ["retrain"] * 4,
            "step": steps * 2,
            "clean_score": [2.0, 6.0, 9.0, 10.0, 0.0, 4.0, 8.0, 9.5],
        }
    )
    h = hysteresis(metrics)
    assert h["level"] == 9.0
    assert h["clean_steps_to_level"] == 30 and h["retrain_steps_to_level"] == 40
    assert h["gap_area"] == pytest.approx((2 + 2 + 1 + 0.5) / 4)
    assert h["final_gap"] == pytest.approx(-0.5)


def test_random_component_sets_match_the_tested_set_in_kind():
    """The nulls' random sets hold as many MLPs and heads as the set they are compared with; on a
    model without MLPs they are exactly the plain uniform sample of the same generator."""
    import random

    from circuit_plasticity.analysis.hooks import matched_sample

    heads = [(lay, h) for lay in range(3) for h in range(4)]
    mlps = [(lay, -1) for lay in range(3)]
    for like in ([(0, -1), (1, -1), (2, 3)], [(0, 1), (1, 2)], [(2, -1)]):
        for seed in range(20):
            got = matched_sample(random.Random(seed), heads + mlps, like)
            assert len(set(got)) == len(like)
            assert sum(c[1] < 0 for c in got) == sum(c[1] < 0 for c in like)
    assert matched_sample(random.Random(5), heads, [(0, 0)] * 3) == random.Random(5).sample(heads, 3)
    # too few MLPs left in the pool: heads fill the rest, the size is kept
    got = matched_sample(random.Random(0), heads + mlps[:1], [(1, -1), (2, -1), (0, 0)])
    assert len(got) == 3 and sum(c[1] < 0 for c in got) == 1
