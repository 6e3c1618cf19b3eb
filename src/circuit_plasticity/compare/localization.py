"""Localization: does the clean -> poisoned change live in a few components, more than
importance explains and more than an ordinary fine-tune of the same length concentrates its own?

Judged on the origin view (each component's weights taken from the poisoned model into the
clean one, compare/origin.py); the carrier view (outputs) and the paper's own evidence
(attention-pattern patching, per head) are reported beside it. For each change (the poison, and
the control: clean -> control at the poison's number of steps):
- single-component effects on every component of the parameter partition, embeddings and norms
  included, and the interaction residual (whole change minus their sum, as a share of it);
- the top-k circuit components (heads, MLPs) by |origin effect| on one half of the prompts;
  on the other half, their joint share of the change and their concentration (their summed
  |single effects| over every component's).
Nulls: the top-k's joint share against importance-matched random sets (compare/nulls.py: each
member replaced by another component of its kind and similar knockout importance in the clean
model),
with the test's floor and power; the poison's concentration minus the control's, with the
largest excess the control leaves possible (1 - its concentration).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from circuit_plasticity.analysis.hooks import component_labels
from circuit_plasticity.compare.evidence import (
    MAIN,
    Method,
    PhaseRuns,
    ablated_scores,
    patched_into,
    point,
    rows,
    weights_into,
)
from circuit_plasticity.compare.nulls import fixed_kinds, matched_draws, null_test
from circuit_plasticity.compare.stats import Interval, boot_mean, boot_ratio, boot_stat, resample_index
from circuit_plasticity.components import Component, component_name

Head = tuple[int, int]


@dataclass
class LocalizationResult:
    measures: dict[str, Interval]
    top: list[Head]  # the localized set: top-k by origin effect
    top_carrier: list[Head]  # the top-k by carrier effect (reported)
    # view -> change -> (component names, [components] mean single effect on the measuring half)
    per_component: dict[str, dict[str, tuple[list[str], np.ndarray]]]


def _halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(10_000 + seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


def _concentration(top: list[int]):
    return lambda d: np.abs(d[top]).sum(0) / np.abs(d).sum(0)


def control_phase(runs: PhaseRuns) -> str | None:
    """The control change the poison is held against: clean -> control at the poison's number
    of steps when the study kept that checkpoint, else the final control."""
    for phase in ("control_matched", "control"):
        if phase in runs.models:
            return phase
    return None


def importance(runs: PhaseRuns, method: Method) -> dict[Head, float]:
    """Each circuit component's knockout effect in the clean model (method.ablation): the
    importance the matched null holds fixed."""
    key = ("importance", method.ablation, method.metric)
    if key not in runs.memo:
        labels = component_labels(runs.models["clean"])
        ablated = ablated_scores(runs, "clean", [[c] for c in labels], method)
        effect = (ablated - runs.s("clean", method.metric)[None]).mean(1)
        runs.memo[key] = {c: float(e) for c, e in zip(labels, effect, strict=True)}
    return runs.memo[key]


def single_effects(runs: PhaseRuns, change: str, view: str, metric: str) -> tuple[list[str], np.ndarray]:
    """(names, [components, n]) single-component effects of the clean -> `change` difference:
    origin over every component of the partition, carrier over the circuit components."""
    key = ("singles", change, view, metric)
    if key not in runs.memo:
        clean = runs.s("clean", metric)
        if view == "origin":
            names = [c.name for c in runs.partition().components]
            scores = weights_into(runs, "clean", change, [[n] for n in names], metric=metric)
        else:
            labels = component_labels(runs.models["clean"])
            names = [component_name(c) for c in labels]
            scores = patched_into(runs, "clean", change, [[c] for c in labels], metric=metric)
        runs.memo[key] = (names, scores - clean[None])
    return runs.memo[key]


def pattern_effects(runs: PhaseRuns, change: str = "poisoned") -> tuple[list[str], np.ndarray]:
    """The paper's evidence: [heads, n] clean-model score change with one head's attention
    pattern (every query position) taken from `change`."""
    from circuit_plasticity.analysis.hooks import head_labels
    from circuit_plasticity.analysis.patching import activation_cache, patch_each_head

    key = ("pattern", change)
    if key not in runs.memo:
        model, batch = runs.models["clean"], runs.batch
        source = activation_cache(runs.models[change], batch.tokens, "pattern")
        labels = head_labels(model)
        with torch.no_grad():
            scores = patch_each_head(model, batch, batch.tokens, source, labels, activation="pattern")
        runs.memo[key] = ([component_name(c) for c in labels], scores.cpu().numpy() - runs.s("clean")[None])
    return runs.memo[key]


def localization_evidence(
    runs: PhaseRuns,
    k: int,
    n_random: int,
    seed: int,
    method: Method = MAIN,
    window: int = 4,
    margin: float = 0.1,
) -> LocalizationResult:
    """The localization measures of one seed under `method` (module docstring)."""
    metric = method.metric
    clean = runs.s("clean", metric)
    select, held = _halves(len(clean), seed)
    index_all = resample_index(len(clean), seed)
    index_held = resample_index(len(held), seed + 1)
    control = control_phase(runs)
    changes = ["poisoned"] + ([control] if control else [])
    out: dict[str, Interval] = {}
    per: dict[str, dict[str, tuple[list[str], np.ndarray]]] = {"origin": {}, "carrier": {}}
    tops: dict[tuple[str, str], list[int]] = {}
    circuit_kinds = {c.name for c in runs.partition().circuit_components()}
    for change in changes:
        key = "" if change == "poisoned" else "_control"
        whole = runs.s(change, metric) - clean
        for view in ("origin", "carrier"):
            names, delta = single_effects(runs, change, view, metric)
            selectable = [i for i, n in enumerate(names) if n in circuit_kinds]
            order = np.argsort(-np.abs(delta[selectable][:, select].mean(1)), kind="stable")
            top = [selectable[i] for i in order[:k]]
            tops[(change, view)] = top
            per[view][change] = (names, delta[:, held].mean(1))
            suffix = "" if view == "origin" else "_carrier"
            out[f"concentration{suffix}{key}"] = boot_stat(_concentration(top), [delta[:, held]], index_held)
            residual = whole[None] - delta.sum(0, keepdims=True)
            out[f"interaction{suffix}{key}"] = boot_ratio(residual[0], whole, index_all)
    names, delta = single_effects(runs, "poisoned", "origin", metric)
    top_idx = tops[("poisoned", "origin")]
    top = [Component.parse(names[i]) for i in top_idx]
    carrier_names, _ = single_effects(runs, "poisoned", "carrier", metric)
    top_carrier = [Component.parse(carrier_names[i]) for i in tops[("poisoned", "carrier")]]
    gap = runs.s("poisoned", metric) - clean
    out["drop"] = boot_mean(gap, index_all)
    out["uniform_concentration"] = point(k / len(names))
    # the top-k's joint origin share of the drop, held-out half, against matched random sets
    weights = importance(runs, method)
    pool = list(weights)
    draws = matched_draws(random.Random(seed), pool, weights, top, n_random, window)
    joint = weights_into(
        runs, "clean", "poisoned", [[component_name(c) for c in s] for s in [top, *draws]], held, metric
    )
    held_gap = gap[held]
    out["top_share"] = boot_ratio(joint[0] - clean[held], held_gap, index_held)
    joint_carrier = patched_into(runs, "clean", "poisoned", [top_carrier], held, metric)
    out["top_share_carrier"] = boot_ratio(joint_carrier[0] - clean[held], held_gap, index_held)
    if out["top_share"].applicable:
        shares = (joint[1:] - clean[held][None]).mean(1) / held_gap.mean()
        test = null_test(out["top_share"].value, shares, margin, fixed_kinds(draws, top)).rows("matched")
        if test["matched_null_fixed"].value > 0:  # this seed's set cannot be matched: it tests nothing
            test |= {k2: Interval.nan() for k2 in ("matched_p", "matched_p_floor", "matched_p_at_margin")}
        out |= test
    else:
        out |= {k2: Interval.nan() for k2 in ("matched_p", "matched_p_floor", "matched_p_at_margin")}
    if control:
        ctrl_top = tops[(control, "origin")]
        _, ctrl_delta = single_effects(runs, control, "origin", metric)
        out["concentration_excess"] = boot_stat(
            lambda p, c: _concentration(top_idx)(p) - _concentration(ctrl_top)(c),
            [delta[:, held], ctrl_delta[:, held]],
            index_held,
        )
        out["concentration_excess_reach"] = point(1 - out["concentration_control"].value)
        out["control_size_ratio"] = point(
            abs(float((runs.s(control, metric) - clean).mean())) / max(abs(float(gap.mean())), 1e-12)
        )
    else:
        out["concentration_excess"] = Interval.nan()
    if "control_sized" in runs.models:  # a benign change as large as the poison's, reported beside
        names_s, sized = single_effects(runs, "control_sized", "origin", metric)
        selectable = [i for i, n in enumerate(names_s) if n in circuit_kinds]
        order = np.argsort(-np.abs(sized[selectable][:, select].mean(1)), kind="stable")
        sized_top = [selectable[i] for i in order[:k]]
        out["concentration_size_matched"] = boot_stat(_concentration(sized_top), [sized[:, held]], index_held)
        out["concentration_excess_size_matched"] = boot_stat(
            lambda p, c: _concentration(top_idx)(p) - _concentration(sized_top)(c),
            [delta[:, held], sized[:, held]],
            index_held,
        )
    return LocalizationResult(rows("localization", out), top, top_carrier, per)
