"""The calibration suite: the verdicts on models whose mechanism change is known by construction.

Each case is one seed judged on its own prompts (min_seeds = 1: the question is what this one
model did). The expected verdict follows from how the models were built (tests/calibration.py;
docs/analysis.md, "Calibration"); none is tuned to a measured number.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from calibration import TOY, build_zoo, copy_of, mover_copied_into, scaled_outputs

from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.pipeline import circuit_of
from circuit_plasticity.compare.verdicts import VerdictThresholds
from circuit_plasticity.components import component_name
from circuit_plasticity.models.load import load_model
from circuit_plasticity.models.toy import TOY_DIR
from circuit_plasticity.study.judge import JudgeOptions, SeedModels, judge
from circuit_plasticity.training.evaluate import task_batch

pytestmark = pytest.mark.slow
OPTIONS = JudgeOptions(n=120, n_random=100, thresholds=VerdictThresholds(min_seeds=1), full_analysis=False)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    toy = load_model(TOY)
    batch = task_batch(toy, "ioi", n=OPTIONS.n, seed=20_000, split="test")  # the prompts judge uses
    return build_zoo(root, circuit_of(toy, batch))


@pytest.fixture(scope="module")
def verdicts(zoo, tmp_path_factory):
    """case -> judge output; the base model's analysis is shared (judge resumes from files)."""
    root = tmp_path_factory.mktemp("judged")
    cache: dict[str, object] = {}

    def run(case: str, **phases) -> dict:
        if case not in cache:
            models = {
                "base": TOY,
                "clean": zoo.ckpt("clean"),
                "poisoned": zoo.ckpt("poisoned"),
                "retrain": zoo.ckpt("retrain"),
                "control": zoo.ckpt("control"),
            } | phases
            out = root / case
            shared = root / "base-analysis"
            if shared.exists():
                shutil.copytree(shared, out / "seeds" / "seed-0" / "analysis" / "base")
            j = judge([SeedModels(seed=0, **models)], out, OPTIONS, progress=lambda *_: None)
            if not shared.exists():
                shutil.copytree(out / "seeds" / "seed-0" / "analysis" / "base", shared)
            cache[case] = (
                {r.finding: (r.verdict, r.reason) for r in j.verdicts.itertuples()},
                j.summary.set_index("measure"),
                (out / "seeds" / "seed-0" / "compare" / "findings.json").read_text(),
            )
        return cache[case]

    return run


def test_planted_poison_is_localized_to_the_planted_heads(zoo, verdicts):
    """Poison trained through two name movers only: localized, and they are among the top-k."""
    found, _, findings = verdicts("planted")
    assert found["localization"][0] == "yes", found["localization"]
    import json

    top = json.loads(findings)["localization_top_heads"].split(",")
    assert {component_name(c) for c in zoo.planted} <= set(top)


def test_a_poison_phase_that_changes_nothing_is_never_localized(zoo, verdicts):
    """The poison phase's data holds no poisoned example: no corruption, nothing to recover."""
    found, summary, _ = verdicts("null-poison", poisoned=zoo.ckpt("null-poison"))
    assert found["localization"] == ("no", found["localization"][1])
    assert "no corruption" in found["localization"][1]
    assert found["neuroplasticity"][0] == "inconclusive"
    assert "nothing to recover" in found["neuroplasticity"][1]


def test_behaviour_restored_through_other_heads_is_never_neuroplasticity(zoo, verdicts):
    """Retraining may move only heads outside the circuit and the poisoned set."""
    found, summary, _ = verdicts("repair-elsewhere", retrain=zoo.ckpt("retrain-elsewhere"))
    assert found["localization"][0] == "yes"  # the same poisoned model as the planted case
    assert found["neuroplasticity"][0] == "no", found["neuroplasticity"]


def test_exact_restoration_is_neuroplasticity(zoo, verdicts, tmp_path):
    """The retrained model is the clean model's weights again: everything recovers exactly."""
    restored = copy_of(zoo.ckpt("clean"), tmp_path / "restored")
    found, summary, _ = verdicts("exact-restoration", retrain=restored)
    assert summary.loc["neuroplasticity_behaviour_recovery", "mean"] == pytest.approx(1.0, abs=1e-5)
    assert summary.loc["neuroplasticity_localized_recovery", "mean"] == pytest.approx(1.0, abs=1e-5)
    assert found["neuroplasticity"][0] == "yes", found["neuroplasticity"]


def test_a_gain_outside_the_circuit_is_never_amplification(zoo, verdicts, tmp_path):
    """A last-layer head outside the base circuit (nothing reads it) rewritten as a name mover's
    copy, the head and sign that raise the score most: every member computes exactly what it
    did, so the whole gain lives outside the circuit."""
    mover = zoo.planted[0]
    assert zoo.outside, "the toy's last layer has no head outside the circuit"
    toy = load_model(TOY)
    batch = task_batch(toy, "ioi", n=OPTIONS.n, seed=20_000, split="test")
    candidates = [
        mover_copied_into(tmp_path / f"copy{h}{g}", mover, (lay, h), g)
        for lay, h in zoo.outside
        for g in (1.0, -1.0)
    ]
    clean = max(candidates, key=lambda path: _mean_score(path, batch))
    found, summary, _ = verdicts("gain-outside", clean=clean)
    assert summary.loc["amplification_gain", "ci_low"] > 0  # the construction did raise the score
    assert summary.loc["amplification_member_share", "mean"] == pytest.approx(0.0, abs=1e-5)
    assert found["amplification"][0] == "no", found["amplification"]
    assert "new mechanism" in found["amplification"][1]


def _mean_score(path: str, batch) -> float:
    with torch.no_grad():
        model = load_model(path).model
        return float(task_score(end_logits(model(batch.tokens), batch), batch).mean())


def test_members_scaled_up_is_amplification(zoo, verdicts, tmp_path):
    """Every base-circuit member's output projection x1.5, nothing else: amplification."""
    clean = scaled_outputs(tmp_path / "scaled", sorted(zoo.circuit.head_set()), 1.5)
    found, summary, _ = verdicts("amplified", clean=clean)
    assert found["amplification"][0] == "yes", found["amplification"]


def test_no_change_is_no_amplification(zoo, verdicts, tmp_path):
    """The 'fine-tune' is the base model's weights: no gain, so no amplification."""
    clean = copy_of(str(TOY_DIR), tmp_path / "same-as-base")
    found, _, _ = verdicts("no-gain", clean=clean)
    assert found["amplification"][0] == "no"
    assert "did not raise" in found["amplification"][1]
