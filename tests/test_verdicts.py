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
    "amplification_member_share": [(0.8, 0.7, 0.9)],
    "amplification_member_minus_nonmember": [(0.5, 0.3, 0.7)],
}


def _verdict(values, min_seeds=1, n_seeds=1):
    t = VerdictThresholds(min_seeds=min_seeds)
    table = decide(combine_seeds(_by_seed(values), t.min_seeds), t, n_seeds).set_index("finding")
    return table.loc["amplification", "verdict"], table.loc["amplification", "reason"]


def test_all_criteria_pass_is_yes_and_a_straddle_is_inconclusive():
    assert _verdict(AMP_PASS)[0] == "yes"
    straddle = AMP_PASS | {"amplification_member_share": [(0.55, 0.4, 0.7)]}
    verdict, reason = _verdict(straddle)
    assert verdict == "inconclusive" and "straddles" in reason


def test_a_gain_outside_the_circuit_reads_new_mechanism():
    outside = AMP_PASS | {"amplification_member_share": [(0.1, 0.0, 0.2)]}
    verdict, reason = _verdict(outside)
    assert verdict == "no" and "new mechanism" in reason


def test_too_few_seeds_is_inconclusive_whatever_the_prompts_say():
    verdict, reason = _verdict(AMP_PASS, min_seeds=3)
    assert verdict == "inconclusive" and "too few seeds" in reason


def test_over_enough_seeds_the_t_interval_decides():
    # three seeds whose member shares spread over the bar: the t-interval straddles it
    spread = AMP_PASS | {
        "amplification_gain": [(2.0, 1.9, 2.1), (2.1, 2.0, 2.2), (1.9, 1.8, 2.0)],
        "amplification_member_share": [(0.9, 0.85, 0.95), (0.3, 0.25, 0.35), (0.7, 0.65, 0.75)],
        "amplification_member_minus_nonmember": [(0.5, 0.4, 0.6)] * 3,
    }
    summary = combine_seeds(_by_seed(spread), 3).set_index("measure")
    assert summary.loc["amplification_member_share", "interval"] == "t-interval over 3 seeds"
    assert _verdict(spread, min_seeds=3, n_seeds=3)[0] == "inconclusive"


def test_neuroplasticity_needs_a_corruption_first():
    t = VerdictThresholds(min_seeds=1)
    values = {
        "localization_drop": [(0.5, -0.2, 1.2)],  # no drop beyond noise
        "neuroplasticity_behaviour_recovery": [(1.0, 0.9, 1.1)],
        "neuroplasticity_localized_recovery": [(1.0, 0.9, 1.1)],
        "neuroplasticity_faithfulness_gap": [(0.0, -0.05, 0.05)],
        "neuroplasticity_faithfulness_excess": [(0.3, 0.2, 0.4)],
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
        "amplification_member_share": [(0.9, 0.85, 0.95), (nan, nan, nan), (nan, nan, nan)],
        "amplification_member_minus_nonmember": [(0.5, 0.4, 0.6)] * 3,
    }
    verdict, reason = _verdict(three, min_seeds=3, n_seeds=3)
    assert verdict == "inconclusive" and "applicable in only 1 seeds" in reason


def test_a_seed_without_an_interval_leaves_no_union():
    nan = float("nan")
    values = AMP_PASS | {"amplification_member_share": [(0.8, 0.7, 0.9), (0.8, nan, nan)]}
    row = combine_seeds(_by_seed(values), 3).set_index("measure").loc["amplification_member_share"]
    assert math.isnan(row.ci_low) and math.isnan(row.ci_high)
