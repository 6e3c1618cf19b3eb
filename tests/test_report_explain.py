"""The verdicts in plain words: the sentences carry the numbers of the findings table, name the
components each seed recorded, state the measures the verdict used, and say what they have
when a measure is missing."""

from __future__ import annotations

import pandas as pd

from circuit_plasticity.compare.verdicts import VerdictThresholds, decide
from circuit_plasticity.report.explain import Study, components_over_seeds, explain


def _findings(**rows: tuple[float, float, float]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "measure": m,
                "mean": v[0],
                "ci_low": v[1],
                "ci_high": v[2],
                "n_seeds": 3,
                "interval": "t",
                "clipped": False,
            }
            for m, v in rows.items()
        ]
    )


FINDINGS = _findings(
    localization_drop=(-18.9, -20.8, -16.9),
    localization_top_share=(0.87, 0.80, 0.95),
    localization_matched_null=(0.48, 0.46, 0.49),
    localization_matched_p=(0.0009, 0.0009, 0.0009),
    localization_top_share_carrier=(0.61, 0.55, 0.67),
    localization_concentration=(0.52, 0.50, 0.55),
    localization_concentration_control=(0.50, 0.38, 0.61),
    localization_concentration_excess=(0.03, -0.10, 0.15),
    localization_concentration_excess_reach=(0.5, 0.5, 0.5),
    neuroplasticity_behaviour_recovery=(0.88, 0.86, 0.89),
    neuroplasticity_localized_recovery=(0.89, 0.86, 0.92),
    neuroplasticity_faithfulness_gap=(0.03, -0.04, 0.11),
    neuroplasticity_faithfulness_retrain=(0.93, 0.88, 0.98),
    neuroplasticity_faithfulness_clean=(0.90, 0.86, 0.94),
    neuroplasticity_faithfulness_control=(0.91, 0.87, 0.95),
    neuroplasticity_random_circuits_p=(0.01, 0.01, 0.01),
    neuroplasticity_random_circuits_clean_p=(0.002, 0.002, 0.002),
)
SEEDS = {
    s: {"localization_top_heads": "a1.h0,a1.h1," + h} for s, h in ((0, "a0.h0"), (1, "a0.h1"), (2, "a0.h1"))
}


def _explained(findings: pd.DataFrame = FINDINGS) -> dict:
    verdicts = decide(findings, VerdictThresholds(), 3)
    study = Study(findings, verdicts, SEEDS, {}, "logit difference", VerdictThresholds())
    return {x.finding: x for x in explain(study)}


def test_localization_sentence_carries_the_numbers_components_and_control():
    x = _explained()["localization"]
    text = " ".join(x.sentences)
    assert "dropped the logit difference by 18.9 [16.9, 20.8]" in text  # the drop, signed as a drop
    # where it lives (weights, against the importance-matched null) and what carries it (outputs)
    assert "87 % [80, 95] of the drop" in text and "same importance carry 48 %" in text
    assert "p = 0.0009" in text and "61 % [55, 67] (an output" in text
    assert "a1.h0 and a1.h1 in every seed, a0.h1 in 2 of 3, a0.h0 in 1 of 3" in text
    assert "about as concentrated as" in text  # the excess's interval straddles 0
    assert (
        x.verdict == "inconclusive"
        and "0.03 [-0.1, 0.15], an interval that straddles its bar (above 0)" in x.why
    )
    used = {c.measure: (c.bar, c.outcome) for c in x.criteria}
    assert used["localization_top_share"] == ("at least 50 %", "pass")
    assert used["localization_matched_p"] == ("below 0.05", "pass")
    assert used["localization_concentration_excess"] == ("above 0", "unclear")


def test_neuroplasticity_is_decided_by_the_rank_test_only_where_that_test_works():
    x = _explained()["neuroplasticity"]
    assert x.verdict == "yes" and x.why == f"Yes: all {len(x.criteria)} criteria pass."
    assert "neuroplasticity_random_circuits_p" in {c.measure for c in x.criteria}
    # the base circuit ranks above random circuits in the retrained model, and in the clean one
    assert any("p = 0.01" in s and "p = 0.002" in s and "in the clean model" in s for s in x.sentences)
    # the same rank test failing in the clean model: it says nothing about the retrained one
    broken = FINDINGS.copy()
    broken.loc[broken.measure == "neuroplasticity_random_circuits_clean_p", "mean"] = 0.3
    y = _explained(broken)["neuroplasticity"]
    outcome = {c.measure: c.outcome for c in y.criteria}["neuroplasticity_random_circuits_p"]
    assert outcome == "untestable" and y.verdict != "yes"


def test_a_missing_measure_drops_its_clause_and_an_unknown_finding_lists_its_criteria():
    thin = FINDINGS[
        ~FINDINGS.measure.isin(["localization_matched_null", "localization_concentration_excess"])
    ]
    text = " ".join(_explained(thin)["localization"].sentences)
    assert "same importance" not in text and "concentrated" not in text and "87 %" in text
    verdicts = pd.DataFrame(
        [
            {
                "finding": "new finding",
                "verdict": "no",
                "reason": "no: x",
                "criteria": "localization_drop: pass",
                "rule": "",
            }
        ]
    )
    (x,) = explain(Study(FINDINGS, verdicts, {}, {}, "score", None))
    assert x.sentences == ["poisoned - clean score: -18.9 [-20.8, -16.9]."] and x.criteria[0].bar == ""


def test_components_are_grouped_by_how_many_seeds_name_them():
    assert components_over_seeds({0: ["a1.h0", "m0"], 1: ["a1.h0"]}) == "a1.h0 in every seed, m0 in 1 of 2"
    assert components_over_seeds({0: ["a2.h1", "a10.h0"]}) == "a2.h1 and a10.h0"
    # heads and MLPs in one group (a Greater-Than circuit): layer by layer, a layer's MLP last
    mixed = ["m1", "a1.h0", "m0", "a0.h1"]
    assert components_over_seeds({0: mixed, 1: mixed}) == "a0.h1, m0, a1.h0 and m1 in every seed"
    assert components_over_seeds({}) == ""


def test_components_sort_by_layer_when_heads_and_mlps_mix():
    """A study whose amplified set holds heads and MLPs of one layer (toy-ioi-large) crashed here."""
    from circuit_plasticity.report.explain import _component_order

    mixed = ["a1.h2", "m0", "a0.h6", "m1", "a10.h0", "a1.h10"]
    # in the order the model computes them: a layer's heads, then its MLP
    assert sorted(mixed, key=_component_order) == ["a0.h6", "m0", "a1.h2", "a1.h10", "m1", "a10.h0"]
