"""Each verdict in plain words: one template per finding that reads the findings and verdicts
tables and each seed's findings.json and base circuit, names the components, gives the numbers
and the control, and says which measures decided the verdict.

The templates are written against today's measures and say gracefully what they have: a
missing measure drops its clause, an unknown finding falls back to its criteria. Change the
measures in compare/, then the clause that reads them here."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

# what each measure is, in words: for the criteria table and the "decided by" line
LABELS = {
    "amplification_gain": "clean - base score",
    "amplification_existing_share": "share of the gain carried by the existing mechanism",
    "amplification_existing_minus_rest": "existing mechanism's minus the rest's share",
    "amplification_existing_minus_uniform": "existing mechanism's share minus a uniform rescaling's",
    "amplification_member_share": "share of the gain carried by base-circuit members",
    "amplification_nonmember_share": "share of the gain carried by non-members",
    "amplification_uniform_share": "share a uniform rescaling would give the existing mechanism",
    "localization_drop": "poisoned - clean score",
    "localization_top_share": "share of the drop in the top-k components' weights",
    "localization_top_share_carrier": "share of the drop carried by the top-k components' outputs",
    "localization_matched_null": "share in the weights of components of the same importance",
    "localization_matched_p": "p against components of the same importance (Fisher over seeds)",
    "localization_concentration_excess": "concentration of the poison's change minus the control's",
    "neuroplasticity_behaviour_recovery": "share of the drop recovered",
    "neuroplasticity_localized_recovery": "localized components' own recovery by weights",
    "neuroplasticity_faithfulness_gap": "base-circuit faithfulness, retrained minus un-poisoned",
    "neuroplasticity_random_circuits_p": "rank p of the base circuit among random circuits (Fisher)",
    "neuroplasticity_random_circuits_clean_p": "the same rank p in the clean model",
    "repair_recovery": "drop recovered training only the localized components",
    "repair_random_recovery": "drop recovered training as many other components",
    "repair_advantage": "localized minus other-component repair",
}

PERCENT = re.compile(r"(_share|_share_carrier|_matched_null|_recovery|_recovery_to_base)$")


@dataclass
class Study:
    """What the templates read: the findings over seeds, the verdicts, and per seed its
    findings.json (localized heads, ...) and its base circuit's members."""

    findings: pd.DataFrame  # measure, mean, ci_low, ci_high, n_seeds, interval
    verdicts: pd.DataFrame  # finding, verdict, reason, criteria, rule
    by_seed: dict[int, dict] = field(default_factory=dict)  # seed -> findings.json
    members: dict[int, list[str]] = field(default_factory=dict)  # seed -> base-circuit components
    metric: str = "score"
    thresholds: object | None = None  # compare.verdicts.VerdictThresholds the verdicts used
    criteria: pd.DataFrame | None = None  # verdict_criteria.parquet: outcome, power per criterion

    def row(self, measure: str) -> pd.Series | None:
        s = self.findings[self.findings.measure == measure]
        if s.empty or not math.isfinite(float(s["mean"].iloc[0])):
            return None
        return s.iloc[0]

    def has(self, *measures: str) -> bool:
        return all(self.row(m) is not None for m in measures)

    def value(self, measure: str, percent: bool | None = None, ci: bool = True, sign: float = 1.0) -> str:
        """ "87 % [80, 95]", "18.9 [16.9, 20.8]", "p = 0.0009": the mean and its interval."""
        r = self.row(measure)
        if r is None:
            return "n/a"
        from circuit_plasticity.compare.verdicts import is_p_value

        if is_p_value(measure):
            return f"p = {fmt(r['mean'])}"
        percent = bool(PERCENT.search(measure)) if percent is None else percent
        scale = 100.0 if percent else 1.0
        low, high = sorted((sign * r.ci_low * scale, sign * r.ci_high * scale))
        unit = " %" if percent else ""
        mean = f"{fmt(sign * r['mean'] * scale, percent)}{unit}"
        if not ci or not (math.isfinite(low) and math.isfinite(high)) or low == high:
            return mean
        return f"{mean} [{fmt(low, percent)}, {fmt(high, percent)}]"

    @property
    def localized(self) -> dict[int, list[str]]:
        """Each seed's localized (top-k) components, from its findings.json."""
        return self.named("localization_top_heads")

    def named(self, key: str) -> dict[int, list[str]]:
        """Each seed's components listed under `key` in its findings.json."""
        return {s: [c for c in str(f.get(key, "")).split(",") if c] for s, f in self.by_seed.items()}

    def said(self, key: str) -> str:
        """A text each seed's findings.json holds under `key` (one seed's; the first)."""
        return next((str(f[key]) for f in self.by_seed.values() if f.get(key)), "")


def fmt(x: float, percent: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    if percent:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) >= 0.01 or x == 0 else f"{x:.2g}"


def components_over_seeds(per_seed: dict[int, list[str]]) -> str:
    """Components grouped by how many seeds name them: "a1.h0 and a1.h1 in every seed, a0.h1
    in 2 of 3" (one seed: just the names)."""
    seeds = [c for c in per_seed.values() if c]
    if not seeds:
        return ""
    counts = Counter(c for comps in seeds for c in dict.fromkeys(comps))
    if len(seeds) == 1:
        return names(list(counts))
    groups = []
    for count in sorted(set(counts.values()), reverse=True):
        members = sorted((c for c in counts if counts[c] == count), key=_component_order)
        where = "in every seed" if count == len(seeds) else f"in {count} of {len(seeds)}"
        groups.append(f"{names(members)} {where}")
    return ", ".join(groups[:-1]) + (", " if len(groups) > 1 else "") + groups[-1] if groups else ""


def _component_order(name: str) -> tuple:
    """Layer first, then head; heads (a1.h2) and MLPs (m1) mix, so the numbers are one list
    (a flat tuple would compare a head number with an MLP's name)."""
    numbers = [int(x) for x in re.findall(r"\d+", name)]
    return (numbers, name)


def names(items: list[str], limit: int = 8) -> str:
    items = list(items)
    if not items:
        return ""
    shown = items[:limit] + ([f"{len(items) - limit} more"] if len(items) > limit else [])
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + " and " + shown[-1]


@dataclass
class Criterion:
    """One criterion as the verdict used it: its measure, the value, the bar, the outcome."""

    measure: str
    label: str
    value: str
    bar: str  # "at least 50 %", "below 0", ...; "" when the verdict's thresholds are unknown
    outcome: str  # pass, fail, unclear, untestable (as the verdict code recorded it)
    power: str = ""  # what the experiment could have shown (verdict_criteria.parquet)


@dataclass
class Explanation:
    finding: str
    verdict: str
    sentences: list[str]  # what was measured, in words, with the components and the control
    why: str  # why this verdict, in one sentence
    criteria: list[Criterion]  # the measures the verdict used, with their bars and outcomes
    robustness: str = ""  # "robust", or which other method says otherwise


def _outcomes(verdict: pd.Series) -> list[tuple[str, str]]:
    """(measure, outcome) of each criterion, as the verdict code recorded them."""
    pairs = []
    for part in str(verdict.get("criteria", "")).split(";"):
        measure, _, outcome = part.strip().partition(":")
        if measure:
            pairs.append((measure.strip(), outcome.strip()))
    return pairs


def _bar(study: Study, finding: str, measure: str) -> str:
    from circuit_plasticity.compare.verdicts import CRITERIA

    c = next((c for c in CRITERIA.get(finding, []) if c.measure == measure), None)
    if c is None or study.thresholds is None:
        return ""
    bar = c.bar(study.thresholds)
    shown = f"{fmt(100 * bar, True)} %" if PERCENT.search(measure) else fmt(bar)
    return {
        "at_least": f"at least {shown}",
        "above": f"above {shown}",
        "above_zero": "above 0",
        "below_zero": "below 0",
        "requires": "below 0 (else not applicable)",
        "p": f"below {shown}",
    }.get(c.kind, "")


def _power(study: Study, finding: str, measure: str) -> str:
    c = study.criteria
    if c is None or "power" not in c:
        return ""
    row = c[(c.finding == finding) & (c.measure == measure)]
    return str(row.power.iloc[0]) if len(row) else ""


def criteria(study: Study, verdict: pd.Series) -> list[Criterion]:
    return [
        Criterion(
            m,
            LABELS.get(m, m.replace("_", " ")),
            study.value(m),
            _bar(study, verdict.finding, m),
            o,
            _power(study, verdict.finding, m),
        )
        for m, o in _outcomes(verdict)
    ]


def _why(study: Study, verdict: pd.Series, used: list[Criterion]) -> str:
    """Why this verdict, in one sentence: every criterion passed, the one that failed (its
    reason), or the ones whose interval straddles their bar."""
    outcome = str(verdict.verdict)
    reason = str(verdict.reason)
    if outcome == "yes":
        return f"Yes: all {len(used)} criteria pass."
    unclear = [c for c in used if c.outcome == "unclear"]
    if (
        outcome == "inconclusive"
        and unclear
        and "too few seeds" not in reason
        and "not applicable:" not in reason
    ):
        parts = [
            f"the {c.label} is {c.value}, an interval that straddles its bar"
            + (f" ({c.bar})" if c.bar else "")
            if "[" in c.value
            else f"{c.label} is {c.value}"
            for c in unclear
        ]
        return "Inconclusive: " + "; ".join(parts) + "."
    for m, label in LABELS.items():  # the measure in words where the reason names it
        reason = reason.replace(f"{m}'s interval", f"the interval of the {label}").replace(m, label)
    if reason.lower().startswith(f"{outcome}: "):
        reason = reason[len(outcome) + 2 :]
    return f"{outcome.capitalize()}: {reason}."


def _direction(study: Study, measure: str) -> int:
    """+1 / -1 when the interval is wholly above / below 0, else 0."""
    r = study.row(measure)
    if r is None or not (math.isfinite(r.ci_low) and math.isfinite(r.ci_high)):
        return 0
    return 1 if r.ci_low > 0 else -1 if r.ci_high < 0 else 0


def _who(study: Study, key: str) -> str:
    return components_over_seeds(study.named(key))


def amplification(study: Study) -> list[str]:
    out = []
    if study.has("amplification_gain"):
        out.append(f"Clean fine-tuning raised the {study.metric} by {study.value('amplification_gain')}.")
    if study.has("amplification_existing_share"):
        kept, recruited = _who(study, "amplification_kept"), _who(study, "amplification_recruited")
        who = f"the base circuit's members that kept their role ({kept})" if kept else "the base circuit"
        who += f" and the recruits that repeat a member's role ({recruited})" if recruited else ""
        clause = (
            f"The existing mechanism, {who}, carries {study.value('amplification_existing_share')} of that "
            "gain (its fine-tuned outputs patched into the base)"
        )
        if study.has("amplification_uniform_share"):
            clause += (
                f", where a uniform rescaling of every component's direct effect would give it "
                f"{study.value('amplification_uniform_share', ci=False)}"
            )
        out.append(clause + ".")
    changed, new = _who(study, "amplification_changed"), _who(study, "amplification_new")
    if changed:
        out.append(f"Members that changed role (a new mechanism): {changed}.")
    if new:
        out.append(f"Components that joined in a role no member had: {new}.")
    return out


def localization(study: Study) -> list[str]:
    out = []
    if study.has("localization_drop"):
        out.append(
            f"Poisoning dropped the {study.metric} by {study.value('localization_drop', sign=-1)} "
            "(from the clean fine-tune it started from)."
        )
    if study.has("localization_top_share"):
        top = components_over_seeds(study.localized)
        clause = "Where it lives: the weights of " + (top or "the top-k components")
        clause += f" carry {study.value('localization_top_share')} of the drop on held-out prompts"
        if study.has("localization_matched_null"):
            clause += (
                ", where other components of the same importance carry "
                f"{study.value('localization_matched_null', ci=False)}"
            )
            if study.has("localization_matched_p"):
                clause += f" ({study.value('localization_matched_p')})"
        out.append(clause + ".")
    if study.has("localization_top_share_carrier"):
        carriers = _who(study, "localization_top_carrier")
        out.append(
            f"What carries it: the outputs of {carriers or 'the top-k by output'} carry "
            f"{study.value('localization_top_share_carrier')} (an output holds every upstream change "
            "that flows into it)."
        )
    if study.has("localization_concentration_excess"):
        how = {1: "more concentrated than", -1: "less concentrated than", 0: "about as concentrated as"}
        control = study.said("localization_control") or "the control"
        numbers = ""
        if study.has("localization_concentration", "localization_concentration_control"):
            numbers = (
                f" ({study.value('localization_concentration', ci=False)} against "
                f"{study.value('localization_concentration_control', ci=False)})"
            )
        out.append(
            f"The poison's change is {how[_direction(study, 'localization_concentration_excess')]} that of "
            f"an ordinary fine-tune, {control}{numbers}: a difference of "
            f"{study.value('localization_concentration_excess')}."
        )
    sized = study.said("localization_size_matched_control")
    if sized:
        out.append(f"A benign change as large as the poison's: {sized}.")
    return out


def neuroplasticity(study: Study) -> list[str]:
    out = []
    if study.has("neuroplasticity_behaviour_recovery"):
        clause = f"Retraining recovered {study.value('neuroplasticity_behaviour_recovery')} of the drop"
        if study.has("neuroplasticity_localized_recovery"):
            clause += (
                f"; the localized components' own weights recovered "
                f"{study.value('neuroplasticity_localized_recovery')} of their change"
            )
            each = study.said("neuroplasticity_recovery_by_component")
            if each and len(study.by_seed) == 1:
                clause += f" ({each.replace('=', ': ').replace(',', ', ')})"
        out.append(clause + ".")
    if study.has("neuroplasticity_faithfulness_retrain"):
        clause = (
            "The base circuit's normalised faithfulness in the retrained model is "
            f"{study.value('neuroplasticity_faithfulness_retrain', ci=False)}"
        )
        if study.has("neuroplasticity_faithfulness_clean", "neuroplasticity_faithfulness_control"):
            clause += (
                f" against {study.value('neuroplasticity_faithfulness_clean', ci=False)} (clean) and "
                f"{study.value('neuroplasticity_faithfulness_control', ci=False)} (control)"
            )
        if study.has("neuroplasticity_random_circuits_p"):
            clause += (
                f"; among random circuits of its size it ranks at "
                f"{study.value('neuroplasticity_random_circuits_p')}"
            )
            if study.has("neuroplasticity_random_circuits_clean_p"):
                clause += f" ({study.value('neuroplasticity_random_circuits_clean_p')} in the clean model)"
        out.append(clause + ".")
    return out


def targeted_repair(study: Study) -> list[str]:
    out = []
    if study.has("repair_recovery"):
        top = components_over_seeds(study.localized)
        clause = (
            f"Training only the localized components{f' ({top})' if top else ''} recovered "
            f"{study.value('repair_recovery')} of the drop"
        )
        if study.has("repair_random_recovery"):
            clause += (
                "; training as many other components of the same importance on the same data recovered "
                f"{study.value('repair_random_recovery')}"
            )
        out.append(clause + ".")
    return out


TEMPLATES: dict[str, Callable[[Study], list[str]]] = {
    "amplification": amplification,
    "localization": localization,
    "neuroplasticity": neuroplasticity,
    "targeted repair": targeted_repair,
}


def _verdict_row(study: Study, finding: str) -> pd.Series:
    rows = study.verdicts[study.verdicts.finding == finding]
    return rows.iloc[0] if len(rows) else pd.Series({"criteria": ""})


def explain(study: Study) -> list[Explanation]:
    """One explanation per verdict, in the verdicts table's order."""
    out = []
    for verdict in study.verdicts.itertuples(index=False):
        row = pd.Series(verdict._asdict())
        template = TEMPLATES.get(row.finding)
        used = criteria(study, row)
        sentences = template(study) if template else []
        if not sentences:  # a finding without a template, or without its measures: its criteria
            sentences = ["; ".join(f"{c.label}: {c.value}" for c in used) + "."] if used else []
        robust = str(row.get("robustness", "") or "")
        out.append(
            Explanation(row.finding, str(row.verdict), sentences, _why(study, row, used), used, robust)
        )
    return out
