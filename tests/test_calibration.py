"""The calibration suite: the verdicts on models whose mechanism change is known by construction.

The expected verdict of each case follows from how its models were built (tests/calibration.py;
docs/analysis.md, "Calibration") and was written down before the case was first run; none is
tuned to a measured number. Every case is checked under both ablations (mean ablation and each
prompt's own counterfactual), the two methods whose verdicts must agree with the construction.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from calibration import (
    PLANTED_SEEDS,
    TOY,
    TOY_GT,
    build_gt_zoo,
    build_zoo,
    copy_of,
    head_copied_into,
    qk_only,
    scaled_outputs,
)

from circuit_plasticity.analysis.classes import component_roles
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.pipeline import circuit_of
from circuit_plasticity.compare.verdicts import NOT_TESTABLE, VerdictThresholds
from circuit_plasticity.components import component_name
from circuit_plasticity.models.load import load_model
from circuit_plasticity.models.toy import TOY_DIR
from circuit_plasticity.study.judge import JudgeOptions, SeedModels, judge
from circuit_plasticity.training.evaluate import task_batch

pytestmark = pytest.mark.slow
OPTIONS = JudgeOptions(n=120, n_random=60, thresholds=VerdictThresholds(min_seeds=1), full_analysis=False)
BOTH_ABLATIONS = ("main", "counterfactual-ablation")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    toy = load_model(TOY)
    batch = task_batch(toy, "ioi", n=OPTIONS.n, seed=20_000, split="test")  # the prompts judge uses
    return build_zoo(root, circuit_of(toy, batch))


class Case:
    """One judged case: verdicts per method, the main summary, criteria, each seed's findings."""

    def __init__(self, judgement, out):
        self.verdicts = {"main": {r.finding: (r.verdict, r.reason) for r in judgement.verdicts.itertuples()}}
        for r in judgement.methods.itertuples():
            self.verdicts.setdefault(r.method, {})[r.finding] = (r.verdict, r.reason)
        self.summary = judgement.summary.set_index("measure")
        methods = pd.read_parquet(out / "tables" / "findings_methods.parquet")
        self.summaries = {m: g.set_index("measure") for m, g in methods.groupby("method")}
        criteria = pd.read_parquet(out / "tables" / "verdict_criteria.parquet")
        self.criteria = {(r.finding, r.measure): r for r in criteria.itertuples()}
        self.findings = [
            json.loads(p.read_text()) for p in sorted(out.glob("seeds/seed-*/compare/findings.json"))
        ]

    def verdict(self, finding: str, method: str = "main") -> str:
        return self.verdicts[method][finding][0]

    def reason(self, finding: str, method: str = "main") -> str:
        return self.verdicts[method][finding][1]


@pytest.fixture(scope="module")
def judged(zoo, tmp_path_factory):
    """case -> Case, each judged once into a directory of its own."""
    root = tmp_path_factory.mktemp("judged")
    cache: dict[str, Case] = {}

    def run(case: str, *seeds: dict, options: JudgeOptions = OPTIONS) -> Case:
        if case not in cache:
            default = {
                "base": TOY,
                "clean": zoo.ckpt("clean"),
                "poisoned": zoo.ckpt("poisoned-0"),
                "retrain": zoo.ckpt("retrain-0"),
                "control": zoo.ckpt("control"),
            }
            models = [SeedModels(seed=i, **(default | phases)) for i, phases in enumerate(seeds or ({},))]
            j = judge(models, root / case, options, progress=None)
            cache[case] = Case(j, root / case)
        return cache[case]

    return run


def _planted_seeds(zoo, poisoned=lambda i: None) -> list[dict]:
    return [
        {"poisoned": poisoned(i) or zoo.ckpt(f"poisoned-{i}"), "retrain": zoo.ckpt(f"retrain-{i}")}
        for i in range(len(PLANTED_SEEDS))
    ]


def test_planted_poison_is_localized_to_the_planted_heads(zoo, judged):
    """Truth: the poison could change only the two name movers' weights, so every other
    component's origin effect is exactly 0 and any set holding both carries the whole drop; over
    three poisonings the matched null's floor is below alpha. Localization: yes, the planted
    heads in every seed's top-k."""
    case = judged("planted", *_planted_seeds(zoo))
    for method in BOTH_ABLATIONS:
        assert case.verdict("localization", method) == "yes", (method, case.reason("localization", method))
    planted = {component_name(c) for c in zoo.planted}
    for seed in case.findings:
        assert planted <= set(seed["localization_top_heads"].split(","))


def test_a_lora_poison_planted_in_two_heads_is_localized_to_them(zoo, judged):
    """Truth: rank-2 adapters masked to the two name movers are the only trainable weights of
    the poison phase, so (as for the full-rank planted poison) every other component's origin
    effect is exactly 0. Localization: yes, the planted heads in every seed's top-k."""
    seeds = [
        {"poisoned": zoo.ckpt(f"lora-poisoned-{i}"), "retrain": zoo.ckpt(f"lora-retrain-{i}")}
        for i in range(len(PLANTED_SEEDS))
    ]
    case = judged("lora-planted", *seeds)
    assert case.summary.loc["localization_drop", "ci_high"] < 0  # the adapters did corrupt
    for method in BOTH_ABLATIONS:
        assert case.verdict("localization", method) == "yes", (method, case.reason("localization", method))
    planted = {component_name(c) for c in zoo.planted}
    for seed in case.findings:
        assert planted <= set(seed["localization_top_heads"].split(","))


def test_a_poison_through_attention_patterns_only_is_localized_there(zoo, judged, tmp_path):
    """Truth: the clean model with only the two name movers' W_Q and W_K taken from a planted
    poisoning: the change lives in those two heads' weights and acts only through their
    attention. Localization: yes, the two heads in every top-k."""
    made = [
        qk_only(tmp_path / f"qk-{i}", zoo.ckpt("clean"), zoo.ckpt(f"poisoned-{i}"), zoo.planted)
        for i in range(3)
    ]
    case = judged("qk-only", *_planted_seeds(zoo, lambda i: made[i]))
    assert case.summary.loc["localization_drop", "ci_high"] < 0  # the construction did corrupt
    for method in BOTH_ABLATIONS:
        assert case.verdict("localization", method) == "yes", (method, case.reason("localization", method))
    planted = {component_name(c) for c in zoo.planted}
    for seed in case.findings:
        assert planted <= set(seed["localization_top_heads"].split(","))


def test_a_poison_phase_that_changes_nothing_is_never_localized(zoo, judged):
    """Truth: the poison phase's data hold no poisoned example: no corruption, nothing to
    recover or repair."""
    case = judged("null-poison", {"poisoned": zoo.ckpt("null-poison")})
    for method in BOTH_ABLATIONS:
        assert case.verdict("localization", method) == "no"
        assert "no corruption" in case.reason("localization", method)
        assert case.verdict("neuroplasticity", method) == "inconclusive"
        assert "nothing to recover" in case.reason("neuroplasticity", method)


def test_behaviour_restored_through_other_heads_is_never_neuroplasticity(zoo, judged):
    """Truth: retraining could move only last-layer heads outside the circuit: the poisoned name
    movers keep their poisoned weights, so their own recovery by weights is exactly 0."""
    case = judged("repair-elsewhere", {"retrain": zoo.ckpt("retrain-elsewhere")})
    for method in BOTH_ABLATIONS:
        assert case.verdict("neuroplasticity", method) == "no", case.reason("neuroplasticity", method)
    assert case.summary.loc["neuroplasticity_localized_recovery", "mean"] == pytest.approx(0.0, abs=1e-6)


def test_compensation_downstream_is_not_the_poisoned_heads_returning(zoo, judged):
    """Truth: the poison went through the S2 reader only; retraining went through the top name
    mover only (downstream). The S2 reader's weights stay poisoned: its own recovery by weights
    is exactly 0, whatever the behaviour does. Neuroplasticity: no, by that criterion."""
    case = judged(
        "downstream", {"poisoned": zoo.ckpt("poisoned-s2"), "retrain": zoo.ckpt("retrain-downstream")}
    )
    assert case.summary.loc["localization_drop", "ci_high"] < 0
    assert component_name(zoo.s2_reader) in case.findings[0]["localization_top_heads"].split(",")
    assert case.summary.loc["neuroplasticity_localized_recovery", "mean"] == pytest.approx(0.0, abs=1e-6)
    for method in BOTH_ABLATIONS:
        assert case.verdict("neuroplasticity", method) == "no"
    assert case.criteria[("neuroplasticity", "neuroplasticity_localized_recovery")].outcome == "fail"


def test_exact_restoration_is_neuroplasticity_where_the_circuit_can_be_tested(zoo, judged, tmp_path):
    """Truth: the retrained model is the clean model's weights: every recovery is exactly 1 and
    the faithfulness gap 0; the random-circuit test gives the retrained model what it gives the
    clean one. So yes where that test works in the clean model, else not testable; never no."""
    restored = copy_of(zoo.ckpt("clean"), tmp_path / "restored")
    case = judged("exact-restoration", {"retrain": restored})
    assert case.summary.loc["neuroplasticity_behaviour_recovery", "mean"] == pytest.approx(1.0, abs=1e-5)
    assert case.summary.loc["neuroplasticity_localized_recovery", "mean"] == pytest.approx(1.0, abs=1e-5)
    for method in BOTH_ABLATIONS:
        p = case.summaries[method].loc["neuroplasticity_random_circuits_clean_p", "mean"]
        expected = "yes" if p < 0.05 else NOT_TESTABLE
        assert case.verdict("neuroplasticity", method) == expected, case.reason("neuroplasticity", method)


def _mean_score(path: str, batch) -> float:
    with torch.no_grad():
        model = load_model(path).model
        return float(task_score(end_logits(model(batch.tokens), batch), batch).mean())


def test_a_recruited_copy_of_an_existing_role_is_amplification(zoo, judged, tmp_path):
    """Truth: a last-layer head outside the circuit (nothing reads it) rewritten as a copy of a
    member (output scaled by +-1 or +-2), kept where the copy raises the score and measures as a
    role a member holds: every member computes what it did, and the gain lives in a head that
    repeats a member's role (the paper's backup becoming a name mover). Amplification: yes, by
    recruitment; members' share exactly 0."""
    toy = load_model(TOY)
    batch = task_batch(toy, "ioi", n=OPTIONS.n, seed=20_000, split="test")
    base_score = _mean_score(TOY, batch)
    roles = component_roles(toy.model, batch, abs(base_score))
    held = {roles[h] for h in zoo.circuit.head_set()} - {None}
    donors = [h for h in sorted(zoo.circuit.head_set()) if roles[h]]
    found = []
    for donor in donors:
        for target in zoo.outside:
            for gain in (1.0, -1.0, 2.0, -2.0):
                path = head_copied_into(
                    tmp_path / f"copy-{donor}-{target}-{gain}".replace(" ", ""), donor, target, gain
                )
                score = _mean_score(path, batch)
                role = component_roles(load_model(path).model, batch, abs(base_score))[target]
                if score > base_score and role in held:
                    found.append((score, path, target))
    assert found, "no copy of a member raised the score in a member's role"
    _, clean, target = max(found)
    case = judged("recruited", {"clean": clean})
    assert case.summary.loc["amplification_gain", "ci_low"] > 0  # the construction did raise the score
    assert case.summary.loc["amplification_member_share", "mean"] == pytest.approx(0.0, abs=1e-5)
    for method in BOTH_ABLATIONS:
        assert case.verdict("amplification", method) == "yes", case.reason("amplification", method)
    assert component_name(target) in case.findings[0]["amplification_recruited"].split(",")


def test_a_member_that_reverses_its_role_is_a_new_mechanism(zoo, judged, tmp_path):
    """Truth: the base is the toy with its top name mover's output negated (a negative name
    mover there), the fine-tune is the toy itself: the whole gain lives in that one member, and
    it changed role (negative name mover -> name mover) rather than doing more of what it did.
    Amplification: no, a new mechanism."""
    mover = max((h for h in zoo.circuit.heads if h.role == "name_mover"), key=lambda h: abs(h.effect)).key
    base = scaled_outputs(tmp_path / "negated", [mover], -1.0)
    toy = load_model(TOY)
    batch = task_batch(toy, "ioi", n=OPTIONS.n, seed=20_000, split="test")
    scale = abs(_mean_score(base, batch))
    assert component_roles(load_model(base).model, batch, scale)[mover] == "negative_name_mover"
    assert component_roles(toy.model, batch, scale)[mover] == "name_mover"
    case = judged("reversed", {"base": base, "clean": copy_of(str(TOY_DIR), tmp_path / "toy-as-clean")})
    assert case.summary.loc["amplification_gain", "ci_low"] > 0
    for method in BOTH_ABLATIONS:
        assert case.verdict("amplification", method) == "no", case.reason("amplification", method)
        assert "new mechanism" in case.reason("amplification", method)
    assert component_name(mover) in case.findings[0]["amplification_changed"].split(",")


def test_members_scaled_up_is_amplification(zoo, judged, tmp_path):
    """Truth: every base-circuit member's output projection x1.5, nothing else: each keeps its
    role and does more of it. Amplification: yes."""
    clean = scaled_outputs(tmp_path / "scaled", sorted(zoo.circuit.head_set()), 1.5)
    case = judged("amplified", {"clean": clean})
    for method in BOTH_ABLATIONS:
        assert case.verdict("amplification", method) == "yes", case.reason("amplification", method)


def test_no_change_is_no_amplification(zoo, judged, tmp_path):
    """Truth: the 'fine-tune' is the base model's weights: no gain, so no amplification."""
    clean = copy_of(str(TOY_DIR), tmp_path / "same-as-base")
    case = judged("no-gain", {"clean": clean})
    for method in BOTH_ABLATIONS:
        assert case.verdict("amplification", method) == "no"
        assert "did not raise" in case.reason("amplification", method)


def test_a_poison_in_one_of_two_mlps_is_not_testable_against_a_matched_null(judged, tmp_path_factory):
    """Truth (toy-gt): the Greater-Than poison trained through MLP 0 only: the change lives in
    m0's weights alone, and the only other MLP a matched set can hold in its place is m1: the
    null cannot vary in MLPs. Localization not testable at this scale, never no; m0 in the top-k."""
    run = build_gt_zoo(tmp_path_factory.mktemp("gt"))
    phases = {p: str(run.final_checkpoint(p)) for p in ("clean", "poisoned", "retrain", "control")}
    options = JudgeOptions(
        n=120,
        n_random=60,
        thresholds=VerdictThresholds(min_seeds=1),
        full_analysis=False,
        task="greater-than",
    )
    case = judged("gt-m0", {"base": TOY_GT, **phases}, options=options)
    assert case.summary.loc["localization_drop", "ci_high"] < 0
    for method in BOTH_ABLATIONS:
        assert case.verdict("localization", method) == NOT_TESTABLE, case.reason("localization", method)
    assert "m0" in case.findings[0]["localization_top_heads"].split(",")
