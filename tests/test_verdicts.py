"""Verdict logic and its statistics, held to answers derived by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from circuit_plasticity.compare.stats import (
    boot_mean,
    boot_ratio,
    fisher_combine,
    permutation_p,
    resample_index,
)
from circuit_plasticity.compare.verdicts import VerdictThresholds, combine_seeds, decide


def test_fisher_combination_matches_the_chi2_closed_form():
    # one p-value: chi2(2) survival of -2 ln p is p itself
    assert fisher_combine([0.03]) == pytest.approx(0.03)
    # two p = 0.05: x = -4 ln 0.05, chi2(4) sf = exp(-x/2) (1 + x/2)
    x = -4 * math.log(0.05)
    assert fisher_combine([0.05, 0.05]) == pytest.approx(math.exp(-x / 2) * (1 + x / 2))
    # uniform p-values combine to something unremarkable; the mean of p-values is not the answer
    assert fisher_combine([0.5, 0.5, 0.5]) > 0.5


def test_permutation_p_never_zero():
    assert permutation_p(10.0, [0.0] * 99) == pytest.approx(0.01)
    assert permutation_p(0.0, [1.0] * 9) == 1.0


def test_ratio_to_a_change_within_noise_is_not_applicable():
    rng = np.random.default_rng(0)
    index = resample_index(200, seed=1)
    noise = rng.normal(0, 1, 200) - rng.normal(0, 1, 200).mean()  # mean ~0: within noise
    assert math.isnan(boot_ratio(rng.normal(1, 1, 200), noise, index).value)
    real = rng.normal(3, 1, 200)
    r = boot_ratio(real / 2, real, index)
    assert r.value == pytest.approx(0.5) and r.low <= 0.5 <= r.high


def test_bootstrap_interval_covers_the_mean():
    x = np.arange(100.0)
    iv = boot_mean(x, resample_index(100))
    assert iv.low < 49.5 < iv.high and iv.value == 49.5


def _by_seed(values: dict[str, list[tuple[float, float, float]]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"seed": s, "measure": m, "value": v, "ci_low": lo, "ci_high": hi}
            for m, rows in values.items()
            for s, (v, lo, hi) in enumerate(rows)
        ]
    )


AMP_PASS = {
    "amplification_gain": [(2.0, 1.5, 2.5)],
    "amplification_existing_share": [(0.8, 0.7, 0.9)],
    "amplification_existing_minus_rest": [(0.5, 0.3, 0.7)],
    "amplification_existing_minus_uniform": [(0.0, -0.05, 0.05)],
}


def _verdict(values, min_seeds=1, n_seeds=1):
    t = VerdictThresholds(min_seeds=min_seeds)
    table = decide(combine_seeds(_by_seed(values), t.min_seeds), t, n_seeds).set_index("finding")
    return table.loc["amplification", "verdict"], table.loc["amplification", "reason"]


def test_all_criteria_pass_is_yes_and_a_straddle_is_inconclusive():
    assert _verdict(AMP_PASS)[0] == "yes"
    straddle = AMP_PASS | {"amplification_existing_share": [(0.55, 0.4, 0.7)]}
    verdict, reason = _verdict(straddle)
    assert verdict == "inconclusive" and "straddles" in reason


def test_a_gain_outside_the_circuit_reads_new_mechanism():
    outside = AMP_PASS | {"amplification_existing_share": [(0.1, 0.0, 0.2)]}
    verdict, reason = _verdict(outside)
    assert verdict == "no" and "new mechanism" in reason


def test_too_few_seeds_is_inconclusive_whatever_the_prompts_say():
    verdict, reason = _verdict(AMP_PASS, min_seeds=3)
    assert verdict == "inconclusive" and "too few seeds" in reason


def test_over_enough_seeds_the_t_interval_decides():
    # three seeds whose member shares spread over the bar: the t-interval straddles it
    spread = AMP_PASS | {
        "amplification_gain": [(2.0, 1.9, 2.1), (2.1, 2.0, 2.2), (1.9, 1.8, 2.0)],
        "amplification_existing_share": [(0.9, 0.85, 0.95), (0.3, 0.25, 0.35), (0.7, 0.65, 0.75)],
        "amplification_existing_minus_rest": [(0.5, 0.4, 0.6)] * 3,
        "amplification_existing_minus_uniform": [(0.0, -0.01, 0.01)] * 3,
    }
    summary = combine_seeds(_by_seed(spread), 3).set_index("measure")
    assert summary.loc["amplification_existing_share", "interval"] == "t-interval over 3 seeds"
    assert _verdict(spread, min_seeds=3, n_seeds=3)[0] == "inconclusive"


def test_neuroplasticity_needs_a_corruption_first():
    t = VerdictThresholds(min_seeds=1)
    values = {
        "localization_drop": [(0.5, -0.2, 1.2)],  # no drop beyond noise
        "neuroplasticity_behaviour_recovery": [(1.0, 0.9, 1.1)],
        "neuroplasticity_localized_recovery": [(1.0, 0.9, 1.1)],
        "neuroplasticity_faithfulness_gap": [(0.0, -0.05, 0.05)],
        "neuroplasticity_random_circuits_p": [(0.01, float("nan"), float("nan"))],
    }
    table = decide(combine_seeds(_by_seed(values), 1), t, 1).set_index("finding")
    assert table.loc["neuroplasticity", "verdict"] == "inconclusive"
    assert "nothing to recover" in table.loc["neuroplasticity", "reason"]
    assert table.loc["localization", "verdict"] == "no"


def test_bounded_measures_are_clipped_and_marked():
    values = {"localization_concentration": [(0.9, 0.85, 0.95), (0.99, 0.97, 1.0), (0.95, 0.9, 1.0)]}
    row = combine_seeds(_by_seed(values), 3).set_index("measure").loc["localization_concentration"]
    assert row.ci_high == 1.0 and bool(row.clipped) and "clipped" in row.interval


def test_a_measure_applicable_in_too_few_seeds_is_unclear():
    nan = float("nan")
    three = {
        "amplification_gain": [(2.0, 1.9, 2.1), (2.1, 2.0, 2.2), (1.9, 1.8, 2.0)],
        "amplification_existing_share": [(0.9, 0.85, 0.95), (nan, nan, nan), (nan, nan, nan)],
        "amplification_existing_minus_rest": [(0.5, 0.4, 0.6)] * 3,
        "amplification_existing_minus_uniform": [(0.0, -0.01, 0.01)] * 3,
    }
    verdict, reason = _verdict(three, min_seeds=3, n_seeds=3)
    assert verdict == "inconclusive" and "applicable in only 1 seeds" in reason


def test_a_seed_without_an_interval_leaves_no_union():
    nan = float("nan")
    values = AMP_PASS | {"amplification_existing_share": [(0.8, 0.7, 0.9), (0.8, nan, nan)]}
    row = combine_seeds(_by_seed(values), 3).set_index("measure").loc["amplification_existing_share"]
    assert math.isnan(row.ci_low) and math.isnan(row.ci_high)


NAN = float("nan")


def _p(value: float) -> tuple[float, float, float]:
    return (value, NAN, NAN)


LOC = {
    "localization_drop": [(-5.0, -6.0, -4.0)],
    "localization_top_share": [(0.8, 0.7, 0.9)],
    "localization_concentration_excess": [(0.2, 0.1, 0.3)],
    "localization_concentration_excess_reach": [_p(0.6)],
    "localization_matched_p": [_p(0.01)],
    "localization_matched_p_floor": [_p(0.01)],
    "localization_matched_p_at_margin": [_p(0.01)],
    "localization_matched_null_fixed": [_p(0)],
}


def _localization(values, min_seeds=1, n_seeds=1):
    t = VerdictThresholds(min_seeds=min_seeds)
    criteria: list = []
    table = decide(combine_seeds(_by_seed(values), t.min_seeds), t, n_seeds, criteria).set_index("finding")
    return table.loc["localization"], {c["measure"]: c for c in criteria if c["finding"] == "localization"}


def test_a_p_value_above_alpha_is_no_only_with_the_power_to_see_the_margin():
    row, _ = _localization(LOC)
    assert row.verdict == "yes"
    powered = LOC | {"localization_matched_p": [_p(0.4)]}  # p at the margin 0.01: could have seen it
    row, crit = _localization(powered)
    assert row.verdict == "no" and crit["localization_matched_p"]["outcome"] == "fail"
    weak = powered | {"localization_matched_p_at_margin": [_p(0.3)]}  # could not have seen it
    row, crit = _localization(weak)
    assert row.verdict == "inconclusive" and crit["localization_matched_p"]["outcome"] == "unclear"


def test_a_null_whose_floor_is_above_alpha_makes_the_verdict_not_testable():
    floor = LOC | {"localization_matched_p": [_p(0.3)], "localization_matched_p_floor": [_p(0.25)]}
    row, crit = _localization(floor)
    assert row.verdict == "not testable at this scale"
    assert "0.25" in row.reason and crit["localization_matched_p"]["outcome"] == "untestable"
    fixed = LOC | {"localization_matched_null_fixed": [_p(1)]}  # a kind the null cannot vary
    assert _localization(fixed)[0].verdict == "not testable at this scale"


def test_a_fail_elsewhere_outweighs_an_untestable_criterion():
    both = LOC | {
        "localization_matched_p_floor": [_p(0.25)],
        "localization_matched_p": [_p(0.3)],
        "localization_top_share": [(0.2, 0.1, 0.3)],
    }
    assert _localization(both)[0].verdict == "no"


def test_an_interval_that_could_never_clear_its_bar_is_not_testable():
    """Excess over the control: bar 0, half-width 0.4; the control's concentration 0.7 leaves at
    most 0.3. Passing needs > 0.4 (0 + half-width): impossible, so not testable."""
    wide = LOC | {
        "localization_concentration_excess": [(0.1, -0.3, 0.5)],
        "localization_concentration_excess_reach": [_p(0.3)],
    }
    row, crit = _localization(wide)
    assert row.verdict == "not testable at this scale"
    c = crit["localization_concentration_excess"]
    assert c["detectable"] == pytest.approx(0.4) and c["reach"] == pytest.approx(0.3)
    reachable = wide | {"localization_concentration_excess_reach": [_p(0.6)]}
    row, crit = _localization(reachable)
    assert row.verdict == "inconclusive" and crit["localization_concentration_excess"]["outcome"] == "unclear"


def test_p_values_combine_by_fisher_and_carry_no_interval():
    values = {
        "localization_matched_p": [_p(0.05), _p(0.05)],
        "localization_matched_null_fixed": [_p(0), _p(1)],
    }
    s = combine_seeds(_by_seed(values), 3).set_index("measure")
    # seed 1's null could not vary: its p is left out, Fisher of seed 0's alone is that p
    assert s.loc["localization_matched_p", "mean"] == pytest.approx(0.05)
    assert s.loc["localization_matched_p", "n_seeds"] == 1
    assert s.loc["localization_matched_null_fixed", "mean"] == 0  # it could vary in seed 0
    both = combine_seeds(_by_seed(values | {"localization_matched_null_fixed": [_p(0), _p(0)]}), 3)
    x = -4 * math.log(0.05)
    row = both.set_index("measure").loc["localization_matched_p"]
    assert row["mean"] == pytest.approx(math.exp(-x / 2) * (1 + x / 2))
    assert math.isnan(row["ci_low"])


def test_a_seed_whose_null_cannot_vary_is_left_out_of_the_test_not_failed():
    """Seed 1's set holds every MLP its draws could hold: its p (NaN from localization_evidence,
    or a finite one from an older cache: 0.9 here) says nothing, so the test is seed 0's alone,
    said to be on 1 of 2 seeds; with 2 seeds required, too few seeds tested: inconclusive; with
    the null fixed in both seeds nothing was tested."""
    two = {m: rows * 2 for m, rows in LOC.items()}
    one_fixed = two | {
        "localization_matched_p": [_p(0.01), _p(0.9)],
        "localization_matched_p_floor": [_p(0.01), _p(NAN)],
        "localization_matched_p_at_margin": [_p(0.01), _p(NAN)],
        "localization_matched_null_fixed": [_p(0), _p(1)],
    }
    row, crit = _localization(one_fixed, min_seeds=1, n_seeds=2)
    assert row.verdict == "yes"
    assert "on 1 of 2 seeds" in crit["localization_matched_p"]["power"]
    row, crit = _localization(one_fixed, min_seeds=2, n_seeds=2)
    assert row.verdict == "inconclusive"
    assert "only 1 of 2 seeds" in crit["localization_matched_p"]["why"]
    both_fixed = one_fixed | {
        "localization_matched_p": [_p(NAN), _p(NAN)],
        "localization_matched_p_floor": [_p(NAN), _p(NAN)],
        "localization_matched_p_at_margin": [_p(NAN), _p(NAN)],
        "localization_matched_null_fixed": [_p(1), _p(1)],
    }
    row, crit = _localization(both_fixed, min_seeds=2, n_seeds=2)
    assert row.verdict == "not testable at this scale"
    assert crit["localization_matched_p"]["outcome"] == "untestable"


def test_a_verdict_that_flips_under_another_method_is_fragile():
    from circuit_plasticity.compare.verdicts import robustness

    main = pd.DataFrame({"finding": ["localization", "amplification"], "verdict": ["yes", "yes"]})
    other = pd.DataFrame({"finding": ["localization", "amplification"], "verdict": ["no", "yes"]})
    assert robustness(main, {"p_answer": other}) == ["fragile: p_answer says no", "robust"]
