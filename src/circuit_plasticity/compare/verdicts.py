"""Three-valued verdicts from the evidence of all seeds: yes / no / inconclusive.

A verdict is a list of criteria, each a measure held to a bar by its interval:
- pass: the whole interval is on the passing side;
- fail: the whole interval is on the failing side (a "no", with the criterion's reason);
- unclear: the interval straddles the bar, or the measure is not applicable.
Any fail gives "no"; all pass gives "yes" (if there are enough seeds); otherwise
"inconclusive", with every unclear criterion named. Significance criteria ("the poisoned
score is below the clean one by more than noise") fail when the interval includes zero: the
requirement is the significance itself. p-value criteria combine the seeds by Fisher's method.

Intervals over seeds: a t-interval of the per-seed values when there are at least `min_seeds`
seeds; below that, the union of the per-seed bootstrap intervals over prompts (so a verdict
needs every seed's prompts to agree), and "yes"/"no" become "inconclusive: too few seeds".
Bounded measures (shares of members, concentrations, faithfulness is not bounded) are clipped
to their range and the clipping is marked in the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from circuit_plasticity.compare.stats import fisher_combine, t_interval
from circuit_plasticity.spec import bad


@dataclass
class VerdictThresholds:
    """The bars of the verdicts; every default and its reason is in docs/analysis.md."""

    share: float = 0.5  # the top-k heads / the base circuit carry at least half of the change
    behaviour_recovery: float = 0.8  # retraining undoes at least 80 % of the poisoning drop
    localized_recovery: float = 0.5  # the poisoned heads undo at least half of their own change
    faithfulness_tolerance: float = 0.1  # base circuit at most 0.1 less faithful than un-poisoned
    alpha: float = 0.05  # p-value bar against random sets (Fisher-combined over seeds)
    min_seeds: int = 3  # fewer seeds: the verdict is at most "inconclusive"

    def validate(self, where: str, source: str) -> None:
        for key in ("share", "behaviour_recovery", "localized_recovery", "alpha"):
            if not 0 < getattr(self, key) < 1:
                raise bad(source, f"{where}.{key}", f"must lie in (0, 1), got {getattr(self, key)}")
        if self.faithfulness_tolerance < 0:
            raise bad(source, f"{where}.faithfulness_tolerance", "must be >= 0")
        if self.min_seeds < 1:
            raise bad(source, f"{where}.min_seeds", "must be >= 1")


@dataclass(frozen=True)
class Criterion:
    measure: str
    kind: str  # "at_least" (>= bar), "above" (> bar), "above_zero"/"below_zero" (significance),
    # "p", "requires" (a precondition: unmet makes the finding not applicable)
    bar_key: str | None  # a VerdictThresholds field, or None for zero
    fails_as: str  # the "no" reason
    sign: float = 1.0  # the bar is sign * threshold (tolerances are negative bars)

    def bar(self, t: VerdictThresholds) -> float:
        return self.sign * getattr(t, self.bar_key) if self.bar_key else 0.0


CRITERIA: dict[str, list[Criterion]] = {
    "amplification": [
        Criterion(
            "amplification_gain",
            "above_zero",
            None,
            "no: clean fine-tuning did not raise the score by more than noise",
        ),
        Criterion(
            "amplification_member_share",
            "at_least",
            "share",
            "no: new mechanism (the gain lives outside the base circuit)",
        ),
        Criterion(
            "amplification_member_minus_nonmember",
            "above",
            None,
            "no: new mechanism (heads outside the base circuit carry more of the gain)",
        ),
    ],
    "localization": [
        Criterion(
            "localization_drop",
            "below_zero",
            None,
            "no: no corruption (the poisoned score is not below the clean one by more than noise)",
        ),
        Criterion(
            "localization_top_share", "at_least", "share", "no: the top-k heads do not carry the corruption"
        ),
        Criterion(
            "localization_p_random", "p", "alpha", "no: the top-k heads do no better than random k-sets"
        ),
        Criterion(
            "localization_concentration_excess",
            "above",
            None,
            "no: a clean fine-tune of equal length concentrates its change as much",
        ),
    ],
    "neuroplasticity": [
        Criterion(
            "localization_drop",
            "requires",
            None,
            "not applicable: poisoning did not lower the score by more than noise, nothing to recover",
        ),
        Criterion(
            "neuroplasticity_behaviour_recovery",
            "at_least",
            "behaviour_recovery",
            "no: retraining did not restore the behaviour",
        ),
        Criterion(
            "neuroplasticity_localized_recovery",
            "at_least",
            "localized_recovery",
            "no: the poisoned heads did not return (behaviour restored through other heads)",
        ),
        Criterion(
            "neuroplasticity_faithfulness_gap",
            "at_least",
            "faithfulness_tolerance",
            "no: the base circuit explains less of the retrained model than of the un-poisoned ones",
            sign=-1.0,
        ),
        Criterion(
            "neuroplasticity_faithfulness_excess",
            "above",
            None,
            "no: in the retrained model the base circuit is no more faithful than random circuits "
            "of its size",
        ),
    ],
    "targeted repair": [
        Criterion(
            "localization_drop",
            "requires",
            None,
            "not applicable: poisoning did not lower the score by more than noise, nothing to repair",
        ),
        Criterion(
            "repair_advantage",
            "above",
            None,
            "no: training as many random heads on the same data recovers as much",
        ),
    ],
}

RULES = {
    "amplification": "base -> clean gain above noise; base-circuit members carry at least {share:.0%} of it "
    "(patching their clean outputs into the base) and more than the non-members do",
    "localization": "clean -> poisoned drop above noise; the top-k heads (chosen on half the prompts) carry "
    "at least {share:.0%} of it on the other half; they beat random k-sets (Fisher p < {alpha}); the "
    "change is more concentrated than that of the clean -> control fine-tune of equal length",
    "neuroplasticity": "retraining recovers at least {behaviour_recovery:.0%} of the clean -> poisoned drop; "
    "the localized heads recover at least {localized_recovery:.0%} of their own change; the base "
    "circuit's normalised faithfulness in the retrained model is within {faithfulness_tolerance} of "
    "the clean/control models' and above that of random circuits of its size (paired prompts); "
    "applies only after a corruption",
    "targeted repair": "training only the localized heads recovers more of the drop than training as "
    "many random other heads on the same data; applies only after a corruption",
}

# (finding, evidence measure, its label, control measure, the control's label)
SIDE_BY_SIDE = [
    (
        "amplification",
        "amplification_member_share",
        "gain share carried by base-circuit members",
        "amplification_nonmember_share",
        "carried by non-members",
    ),
    (
        "amplification",
        "amplification_member_share",
        "gain share carried by base-circuit members",
        "amplification_uniform_share",
        "under a uniform rescaling",
    ),
    (
        "amplification",
        "amplification_member_share",
        "members' share, base -> clean",
        "amplification_member_share_control",
        "base -> control",
    ),
    (
        "localization",
        "localization_top_share",
        "drop share carried by the top-k heads",
        "localization_random_share",
        "random k-head sets",
    ),
    (
        "localization",
        "localization_concentration",
        "concentration of the poison's change in the top-k",
        "localization_concentration_control",
        "of the control fine-tune's change",
    ),
    (
        "neuroplasticity",
        "neuroplasticity_faithfulness_retrain",
        "base-circuit faithfulness in the retrained model",
        "neuroplasticity_faithfulness_clean",
        "in the clean model",
    ),
    (
        "neuroplasticity",
        "neuroplasticity_faithfulness_retrain",
        "base-circuit faithfulness in the retrained model",
        "neuroplasticity_faithfulness_random",
        "random circuits of its size",
    ),
    (
        "neuroplasticity",
        "neuroplasticity_behaviour_recovery",
        "behaviour recovered toward the clean model",
        "neuroplasticity_localized_recovery",
        "the localized heads' own recovery",
    ),
    (
        "targeted repair",
        "repair_recovery",
        "drop recovered training the localized heads",
        "repair_random_recovery",
        "training as many random heads",
    ),
]


def _bounded(measure: str) -> bool:
    return measure.startswith("accuracy_") or measure.endswith(
        (
            "_concentration",
            "_concentration_control",
            "_uniform_concentration",
            "_jaccard",
            "_members_grown",
            "_top_in_base_circuit",
            "_weight_share_topk",
        )
    )


def combine_seeds(by_seed: pd.DataFrame, min_seeds: int) -> pd.DataFrame:
    """One row per measure: mean over seeds and the interval the verdicts use (see module doc)."""
    rows = []
    for measure, group in by_seed.groupby("measure", sort=False):
        values = [v for v in group.value if v is not None and math.isfinite(v)]
        n = len(values)
        if measure.endswith("_p_random"):
            combined = fisher_combine(values)
            rows.append(_row(measure, combined, combined, combined, n, "Fisher's method over seeds"))
            continue
        has_ci = bool(np.isfinite(group.ci_low.astype(float)).any())
        if n >= max(min_seeds, 2):
            mean, low, high, _ = t_interval(values)
            method = f"t-interval over {n} seeds"
        else:
            finite = group[np.isfinite(group.value.astype(float))]
            if finite.ci_low.isna().any() or finite.ci_high.isna().any():
                finite = finite.iloc[0:0]  # a seed without an interval: no union can be formed
            mean = float(np.mean(values)) if n else float("nan")
            low = float(finite.ci_low.min()) if len(finite) else float("nan")
            high = float(finite.ci_high.max()) if len(finite) else float("nan")
            plural = "s" if n != 1 else ""
            method = f"bootstrap over prompts, {n} seed{plural}" + (" (union)" if n > 1 else "")
            if not has_ci:
                method = f"point value{plural}, {n} seed{plural}"
        clipped = False
        if _bounded(measure) and math.isfinite(low):
            clipped = low < 0 or high > 1
            low, high = max(low, 0.0), min(high, 1.0)
        method += ", clipped to [0, 1]" if clipped else ""
        rows.append(_row(measure, mean, low, high, n, method, clipped))
    return pd.DataFrame(rows)


def _row(measure, mean, low, high, n, method, clipped: bool = False) -> dict:
    return {
        "measure": measure,
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "n_seeds": n,
        "interval": method,
        "clipped": clipped,
    }


def judge_criterion(
    c: Criterion, row: pd.Series | None, t: VerdictThresholds, n_seeds: int = 1
) -> tuple[str, str]:
    """('pass' | 'fail' | 'unclear', why)."""
    if row is None or not math.isfinite(row["mean"]):
        return "unclear", f"{c.measure} not applicable"
    if row["n_seeds"] < min(t.min_seeds, n_seeds):  # not applicable in some seeds: too few left
        return "unclear", f"{c.measure} applicable in only {int(row['n_seeds'])} seeds"
    bar, low, high = c.bar(t), row["ci_low"], row["ci_high"]
    if c.kind == "p":
        return ("pass", "") if row["mean"] < bar else ("fail", c.fails_as)
    if not (math.isfinite(low) and math.isfinite(high)):
        return "unclear", f"{c.measure} has no interval"
    if c.kind in ("below_zero", "requires"):
        return ("pass", "") if high < 0 else ("fail", c.fails_as)
    if c.kind == "above_zero":
        return ("pass", "") if low > 0 else ("fail", c.fails_as)
    passing = low >= bar if c.kind == "at_least" else low > bar
    failing = high < bar if c.kind == "at_least" else high <= bar
    if passing:
        return "pass", ""
    if failing:
        return "fail", c.fails_as
    return "unclear", f"{c.measure}'s interval [{low:.3g}, {high:.3g}] straddles {bar:.3g}"


def decide(summary: pd.DataFrame, thresholds: VerdictThresholds, n_seeds: int) -> pd.DataFrame:
    """One row per finding: verdict, reason, and each criterion's outcome."""
    s = summary.set_index("measure")
    rows = []
    for finding, criteria in CRITERIA.items():
        if not any(c.measure in s.index for c in criteria if c.kind != "requires"):
            continue  # not measured in this study (e.g. no targeted repair)
        outcomes = [
            (c, *judge_criterion(c, s.loc[c.measure] if c.measure in s.index else None, thresholds, n_seeds))
            for c in criteria
        ]
        unmet = [why for c, o, why in outcomes if o == "fail" and c.kind == "requires"]
        outcomes = [t for t in outcomes if t[0].kind != "requires"] if unmet else outcomes
        fails = [why for _, o, why in outcomes if o == "fail"]
        unclear = [why for _, o, why in outcomes if o == "unclear"]
        if unmet:
            verdict, reason = "inconclusive", unmet[0]
        elif fails:
            verdict, reason = "no", fails[0]
        elif unclear:
            verdict, reason = "inconclusive", "; ".join(unclear)
        else:
            verdict, reason = "yes", "every criterion passes"
        if verdict != "inconclusive" and n_seeds < thresholds.min_seeds:
            reason = (
                f"too few seeds ({n_seeds} < min_seeds {thresholds.min_seeds}); "
                f"the prompts alone say {verdict}"
            )
            verdict = "inconclusive"
        rows.append(
            {
                "finding": finding,
                "verdict": verdict,
                "reason": reason,
                "criteria": "; ".join(f"{c.measure}: {o}" for c, o, _ in outcomes),
                "rule": RULES[finding].format(**thresholds.__dict__),
            }
        )
    return pd.DataFrame(rows)
