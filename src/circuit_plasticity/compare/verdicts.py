"""Verdicts from the evidence of all seeds: yes / no / inconclusive / not testable at this scale.

A verdict is a list of criteria, each a measure held to a bar:
- pass: the whole interval is on the passing side;
- fail: the whole interval is on the failing side (a "no", with the criterion's reason);
- unclear: the interval straddles the bar, or the measure is not applicable;
- untestable: no outcome of this experiment could have passed: the bar plus the interval's
  half-width (the smallest value that passes at this spread) lies beyond the most the measure
  can reach, or a null test's floor (its p had the chosen set carried everything) is at or
  above alpha, or its null cannot vary.
Any fail gives "no"; else any untestable gives "not testable at this scale" with the number
that says why; else any unclear gives "inconclusive"; all pass gives "yes" (with enough seeds).
Significance criteria ("the poisoned score is below the clean one by more than noise") fail
when the interval includes zero: the requirement is the significance itself. A p-value
criterion passes below alpha (Fisher's method over seeds) and fails at or above it only when
the test had the power to see the bar (its p at the margin is below alpha); otherwise it is
unclear: absence of evidence is not evidence of absence.

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

    share: float = 0.5  # the top-k / the existing mechanism carry at least half of the change
    behaviour_recovery: float = 0.8  # retraining undoes at least 80 % of the poisoning drop
    localized_recovery: float = 0.5  # the poisoned components undo at least half of their own change
    faithfulness_tolerance: float = 0.1  # base circuit at most 0.1 less faithful than un-poisoned
    uniform_tolerance: float = 0.1  # the existing mechanism's gain share at most 0.1 below uniform's
    null_margin: float = 0.1  # the excess over a null a test must be able to see for a "no"
    alpha: float = 0.05  # p-value bar against the nulls (Fisher-combined over seeds)
    min_seeds: int = 3  # fewer seeds: the verdict is at most "inconclusive"

    def validate(self, where: str, source: str) -> None:
        for key in ("share", "behaviour_recovery", "localized_recovery", "alpha"):
            if not 0 < getattr(self, key) < 1:
                raise bad(source, f"{where}.{key}", f"must lie in (0, 1), got {getattr(self, key)}")
        for key in ("faithfulness_tolerance", "uniform_tolerance", "null_margin"):
            if getattr(self, key) < 0:
                raise bad(source, f"{where}.{key}", "must be >= 0")
        if self.min_seeds < 1:
            raise bad(source, f"{where}.min_seeds", "must be >= 1")


@dataclass(frozen=True)
class Criterion:
    measure: str
    kind: str  # "at_least" (>= bar), "above" (> bar), "above_zero"/"below_zero" (significance),
    # "p" (a null test), "requires" (a precondition: unmet makes the finding not applicable)
    bar_key: str | None  # a VerdictThresholds field, or None for zero
    fails_as: str  # the "no" reason
    sign: float = 1.0  # the bar is sign * threshold (tolerances are negative bars)
    reach: str | float | None = None  # the most the measure can be: a constant or a measure
    margin_key: str | None = None  # p criteria: the VerdictThresholds field of the margin
    reference: str | None = None  # p criteria: the same test where it must work for this one to say
    # anything (the base circuit against random circuits in the clean model)

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
            "amplification_existing_share",
            "at_least",
            "share",
            "no: new mechanism (the gain lives outside the base circuit's members that kept their "
            "role and the recruits that repeat one)",
        ),
        Criterion(
            "amplification_existing_minus_rest",
            "above",
            None,
            "no: new mechanism (components outside the existing mechanism carry more of the gain)",
        ),
        Criterion(
            "amplification_existing_minus_uniform",
            "at_least",
            "uniform_tolerance",
            "no: the existing mechanism carries less of the gain than a uniform rescaling of every "
            "component would give it (others grew more)",
            sign=-1.0,
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
            "localization_top_share",
            "at_least",
            "share",
            "no: the top-k components' own weights do not carry the corruption",
        ),
        Criterion(
            "localization_matched_p",
            "p",
            "alpha",
            "no: random sets of components of the same importance carry as much of the corruption",
            margin_key="null_margin",
        ),
        Criterion(
            "localization_concentration_excess",
            "above",
            None,
            "no: a clean fine-tune of the poison's length concentrates its change as much",
            reach="localization_concentration_excess_reach",
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
            "no: the poisoned components' own weights did not return (behaviour restored through "
            "other components)",
            reach=1.0,
        ),
        Criterion(
            "neuroplasticity_faithfulness_gap",
            "at_least",
            "faithfulness_tolerance",
            "no: the base circuit explains less of the retrained model than of the un-poisoned ones",
            sign=-1.0,
        ),
        Criterion(
            "neuroplasticity_random_circuits_p",
            "p",
            "alpha",
            "no: in the retrained model the base circuit ranks no better than random circuits of its size",
            margin_key="faithfulness_tolerance",
            reference="neuroplasticity_random_circuits_clean_p",
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
            "no: training as many random components on the same data recovers as much",
        ),
    ],
}

RULES = {
    "amplification": "base -> clean gain above noise; the existing mechanism (base-circuit members that "
    "kept their role, and joiners that repeat a member's role) carries at least {share:.0%} of it "
    "(patching its clean outputs into the base), more than the rest of the model does, and no less "
    "than {uniform_tolerance} below the share a uniform rescaling of every component would give it",
    "localization": "clean -> poisoned drop above noise; the top-k components by their own weights "
    "(chosen on half the prompts) carry at least {share:.0%} of it on the other half; they beat random "
    "sets of components of the same importance (Fisher p < {alpha}); the poison's change is more "
    "concentrated than that of the clean -> control fine-tune of the poison's length",
    "neuroplasticity": "retraining recovers at least {behaviour_recovery:.0%} of the clean -> poisoned drop; "
    "the localized components' own weights recover at least {localized_recovery:.0%} of their change; the "
    "base circuit's normalised faithfulness in the retrained model is within {faithfulness_tolerance} "
    "of the clean/control models' and ranks above random circuits of its size (Fisher p < {alpha}); "
    "applies only after a corruption",
    "targeted repair": "training only the localized components recovers more of the drop than training "
    "as many random other components on the same data; applies only after a corruption",
}

# (finding, evidence measure, its label, control measure, the control's label)
SIDE_BY_SIDE = [
    (
        "amplification",
        "amplification_existing_share",
        "gain share carried by the existing mechanism",
        "amplification_uniform_share",
        "under a uniform rescaling",
    ),
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
        "members' share, base -> clean",
        "amplification_member_share_control",
        "base -> control",
    ),
    (
        "localization",
        "localization_top_share",
        "drop share in the top-k components' weights (origin)",
        "localization_matched_null",
        "random sets of equal importance",
    ),
    (
        "localization",
        "localization_top_share",
        "drop share in the top-k components' weights (origin)",
        "localization_top_share_carrier",
        "in the top-k components' outputs (carrier)",
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
        "neuroplasticity_random_circuits_null",
        "random circuits of its size",
    ),
    (
        "neuroplasticity",
        "neuroplasticity_behaviour_recovery",
        "behaviour recovered toward the clean model",
        "neuroplasticity_localized_recovery",
        "the localized components' own recovery (weights)",
    ),
    (
        "targeted repair",
        "repair_recovery",
        "drop recovered training the localized components",
        "repair_random_recovery",
        "training as many random components",
    ),
]

P_SUFFIXES = ("_p", "_p_floor", "_p_at_margin", "_p_random")


def is_p_value(measure: str) -> bool:
    return measure.endswith(P_SUFFIXES)


def null_fixed_measure(p_measure: str) -> str:
    """The row counting the fixed kinds of the null behind a p-value row (x_p, x_p_floor, ...
    -> x_null_fixed)."""
    return p_measure[: p_measure.rindex("_p")] + "_null_fixed"


def _bounded(measure: str) -> bool:
    return measure.startswith("accuracy_") or measure.endswith(
        (
            "_concentration",
            "_concentration_carrier",
            "_concentration_control",
            "_concentration_carrier_control",
            "_uniform_concentration",
            "_jaccard",
            "_members_grown",
            "_top_in_base_circuit",
            "_weight_share_topk",
        )
    )


def combine_seeds(by_seed: pd.DataFrame, min_seeds: int) -> pd.DataFrame:
    """One row per measure: mean over seeds and the interval the verdicts use (see module doc).
    p-values combine by Fisher's method over the seeds that have one and carry no interval; a
    null's count of fixed kinds is the smallest over seeds (a seed whose null cannot vary has no
    p, so the null is untestable only when it is fixed in every seed)."""
    rows = []
    fixed_seeds = {  # null_fixed measure -> the seeds whose null could not vary
        m: set(g.seed[g.value.astype(float) > 0])
        for m, g in by_seed.groupby("measure", sort=False)
        if m.endswith("_null_fixed")
    }
    for measure, group in by_seed.groupby("measure", sort=False):
        if is_p_value(measure):  # a seed whose null cannot vary tested nothing: its p is left out
            group = group[~group.seed.isin(fixed_seeds.get(null_fixed_measure(measure), set()))]
        values = [v for v in group.value if v is not None and math.isfinite(v)]
        n = len(values)
        if is_p_value(measure):
            rows.append(_row(measure, fisher_combine(values), math.nan, math.nan, n, "Fisher's method"))
            continue
        if measure.endswith("_null_fixed"):
            rows.append(_row(measure, min(values) if values else math.nan, math.nan, math.nan, n, "min"))
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


@dataclass(frozen=True)
class Outcome:
    """One criterion judged: its outcome, why, and what the experiment could have shown."""

    outcome: str  # pass, fail, unclear, untestable
    why: str = ""
    detectable: float = math.nan  # the smallest value that passes at this spread (or p at margin)
    reach: float = math.nan  # the most the measure can be (or a null test's floor)
    power: str = ""  # the same in words


def _value(s: pd.DataFrame, measure: str) -> float:
    return float(s.loc[measure, "mean"]) if measure in s.index else math.nan


def _reach(c: Criterion, s: pd.DataFrame) -> float:
    if c.reach is None:
        return math.nan
    return float(c.reach) if isinstance(c.reach, int | float) else _value(s, c.reach)


def _judge_p(c: Criterion, row: pd.Series, s: pd.DataFrame, t: VerdictThresholds) -> Outcome:
    bar, p = c.bar(t), float(row["mean"])
    floor, at_margin = _value(s, f"{c.measure}_floor"), _value(s, f"{c.measure}_at_margin")
    fixed_measure = null_fixed_measure(c.measure)
    margin = getattr(t, c.margin_key) if c.margin_key else math.nan
    power = f"p = {p:.3g}; floor {floor:.3g}; p at an excess of {margin:g} over the null: {at_margin:.3g}"
    tested = int(row["n_seeds"])
    seeds = int(s.loc[fixed_measure, "n_seeds"]) if fixed_measure in s.index else tested
    if tested < seeds:
        power += (
            f"; on {tested} of {seeds} seeds (the others' sets hold every component of a kind their "
            "matched draws could hold, so their null cannot vary)"
        )
    reference = _value(s, c.reference) if c.reference else math.nan
    if math.isfinite(reference) and reference >= bar:
        return Outcome(
            "untestable",
            f"not testable at this scale: the same test fails where it must work "
            f"({c.reference} = {reference:.3g} >= {bar:g})",
            at_margin,
            floor,
            power,
        )
    if p < bar:
        return Outcome("pass", "", at_margin, floor, power)
    if math.isfinite(floor) and floor >= bar:
        return Outcome(
            "untestable",
            f"not testable at this scale: even a set carrying all of the change would get "
            f"{c.measure} = {floor:.3g} >= {bar:g} against this null",
            at_margin,
            floor,
            power,
        )
    if math.isfinite(at_margin) and at_margin < bar:
        return Outcome("fail", c.fails_as, at_margin, floor, power)
    return Outcome(
        "unclear",
        f"{c.measure} = {p:.3g} >= {bar:g}, but the test could not have seen an excess of {margin:g} "
        f"(p at that excess {at_margin:.3g})",
        at_margin,
        floor,
        power,
    )


def judge_criterion(
    c: Criterion, row: pd.Series | None, t: VerdictThresholds, n_seeds: int = 1, s: pd.DataFrame | None = None
) -> Outcome:
    """The outcome of one criterion on the combined summary `s` (indexed by measure).

    A matched null test's p combines over the seeds whose null can vary; fewer of them than
    `min_seeds` leave it unclear, as any measure applicable in too few seeds."""
    s = s if s is not None else pd.DataFrame(columns=["mean"])
    fixed_measure = null_fixed_measure(c.measure) if c.kind == "p" else ""
    fixed = _value(s, fixed_measure) if c.kind == "p" else math.nan
    if math.isfinite(fixed) and fixed > 0:
        return Outcome(
            "untestable",
            f"not testable at this scale: {c.measure}'s null cannot vary in {int(fixed)} kind(s) of "
            "component in every seed that has it (the set holds every component of that kind its "
            "matched draws could hold)",
        )
    if row is None or not math.isfinite(row["mean"]):
        return Outcome("unclear", f"{c.measure} not applicable")
    if row["n_seeds"] < min(t.min_seeds, n_seeds):  # not applicable in some seeds: too few left
        set_up = int(s.loc[fixed_measure, "n_seeds"]) if math.isfinite(fixed) else 0
        if set_up > row["n_seeds"]:
            return Outcome(
                "unclear",
                f"{c.measure}: its matched null could vary in only {int(row['n_seeds'])} of {set_up} "
                "seeds (the others' sets hold every component of a kind), too few for a verdict",
            )
        return Outcome("unclear", f"{c.measure} applicable in only {int(row['n_seeds'])} seeds")
    if c.kind == "p":
        return _judge_p(c, row, s, t)
    bar, low, high = c.bar(t), row["ci_low"], row["ci_high"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return Outcome("unclear", f"{c.measure} has no interval")
    half = (high - low) / 2
    if c.kind in ("below_zero", "requires"):
        detectable = -half
        outcome = "pass" if high < 0 else "fail"
        power = f"passes below {detectable:.3g} at this spread"
        return Outcome(outcome, "" if outcome == "pass" else c.fails_as, detectable, math.nan, power)
    detectable = bar + half
    reach = _reach(c, s)
    power = f"passes above {detectable:.3g} at this spread" + (
        f"; the most it can reach is {reach:.3g}" if math.isfinite(reach) else ""
    )
    if c.kind == "above_zero":
        outcome = "pass" if low > 0 else "fail"
        return Outcome(outcome, "" if outcome == "pass" else c.fails_as, detectable, reach, power)
    passing = low >= bar if c.kind == "at_least" else low > bar
    failing = high < bar if c.kind == "at_least" else high <= bar
    if passing:
        return Outcome("pass", "", detectable, reach, power)
    if failing:
        return Outcome("fail", c.fails_as, detectable, reach, power)
    if math.isfinite(reach) and detectable > reach:
        return Outcome(
            "untestable",
            f"not testable at this scale: {c.measure} would have to exceed {detectable:.3g} to pass "
            f"at this spread, but cannot exceed {reach:.3g}",
            detectable,
            reach,
            power,
        )
    return Outcome(
        "unclear",
        f"{c.measure}'s interval [{low:.3g}, {high:.3g}] straddles {bar:.3g}",
        detectable,
        reach,
        power,
    )


NOT_TESTABLE = "not testable at this scale"


def decide(
    summary: pd.DataFrame, thresholds: VerdictThresholds, n_seeds: int, criteria_out: list | None = None
) -> pd.DataFrame:
    """One row per finding: verdict, reason, power and each criterion's outcome; with
    `criteria_out`, one row per criterion is appended to it (verdict_criteria.parquet)."""
    s = summary.set_index("measure")
    rows = []
    for finding, criteria in CRITERIA.items():
        if not any(c.measure in s.index for c in criteria if c.kind != "requires"):
            continue  # not measured in this study (e.g. no targeted repair)
        judged = [
            (
                c,
                judge_criterion(
                    c, s.loc[c.measure] if c.measure in s.index else None, thresholds, n_seeds, s
                ),
            )
            for c in criteria
        ]
        unmet = [o.why for c, o in judged if o.outcome == "fail" and c.kind == "requires"]
        judged = [(c, o) for c, o in judged if c.kind != "requires"] if unmet else judged
        by = {
            kind: [o.why for _, o in judged if o.outcome == kind]
            for kind in ("fail", "untestable", "unclear")
        }
        if unmet:
            verdict, reason = "inconclusive", unmet[0]
        elif by["fail"]:
            verdict, reason = "no", by["fail"][0]
        elif by["untestable"]:
            verdict, reason = NOT_TESTABLE, "; ".join(by["untestable"])
        elif by["unclear"]:
            verdict, reason = "inconclusive", "; ".join(by["unclear"])
        else:
            verdict, reason = "yes", "every criterion passes"
        if verdict in ("yes", "no") and n_seeds < thresholds.min_seeds:
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
                "criteria": "; ".join(f"{c.measure}: {o.outcome}" for c, o in judged),
                "power": "; ".join(f"{c.measure}: {o.power}" for c, o in judged if o.power),
                "rule": RULES[finding].format(**thresholds.__dict__),
            }
        )
        if criteria_out is not None:
            for c, o in judged:
                row = s.loc[c.measure] if c.measure in s.index else None
                criteria_out.append(
                    {
                        "finding": finding,
                        "measure": c.measure,
                        "outcome": o.outcome,
                        "why": o.why,
                        "bar": c.bar(thresholds),
                        "value": float(row["mean"]) if row is not None else math.nan,
                        "ci_low": float(row["ci_low"]) if row is not None else math.nan,
                        "ci_high": float(row["ci_high"]) if row is not None else math.nan,
                        "detectable": o.detectable,
                        "reach": o.reach,
                        "power": o.power,
                    }
                )
    return pd.DataFrame(rows)


def robustness(main: pd.DataFrame, others: dict[str, pd.DataFrame]) -> list[str]:
    """Per finding of `main`: "robust", or "fragile: <method> says <verdict>" for every method
    whose verdict differs."""
    out = []
    for row in main.itertuples():
        flips = []
        for method, table in others.items():
            theirs = table[table.finding == row.finding]
            if len(theirs) and theirs.verdict.iloc[0] != row.verdict:
                flips.append(f"{method} says {theirs.verdict.iloc[0]}")
        out.append("fragile: " + "; ".join(flips) if flips else "robust")
    return out
