"""The measurements behind the verdicts, each beside its null control, for one seed.

Every model of a seed is run once on the same held-out prompts (`PhaseRuns` caches the
per-prompt scores, the head outputs and the mean-ablation references), and every quantity is a
function of per-prompt vectors, so one shared bootstrap index keeps paired comparisons paired.

References (docs/analysis.md, "Verdicts"):
- amplification: base -> clean, the gain's share carried by base-circuit members against
  non-members (cross-model patching of the sets' whole head outputs, compare/cmap.py), beside
  the control branch and the share a uniform rescaling of direct effects would give;
- localization: clean -> poisoned (the poison phase starts from the clean fine-tune); the top-k
  heads chosen on one half of the prompts and measured on the other, against random k-sets and
  against the same procedure run on clean -> control, a non-poisoned change of equal length;
- neuroplasticity: poisoned -> retrained, toward the clean model (and, reported apart, toward
  the base); the localized heads' own recovery; the base circuit's faithfulness in the
  retrained model against the clean/control models and against random circuits of its size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from circuit_plasticity.analysis.ablation import group_means
from circuit_plasticity.analysis.heads import component_dla
from circuit_plasticity.analysis.hooks import component_labels, matched_sample
from circuit_plasticity.analysis.metrics import evaluate
from circuit_plasticity.analysis.patching import output_cache, patch_each_set
from circuit_plasticity.compare.cmap import patch_outputs
from circuit_plasticity.compare.stats import (
    Interval,
    as_numpy,
    boot_mean,
    boot_ratio,
    boot_stat,
    permutation_p,
    resample_index,
)
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]


@dataclass
class PhaseRuns:
    """One forward pass per model on the shared prompts, and what later steps reuse."""

    models: dict  # phase -> TransformerBridge
    batch: TaskBatch
    scores: dict[str, torch.Tensor] = field(default_factory=dict)
    _z: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    _means: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for phase, model in self.models.items():
            self.scores[phase] = evaluate(model, self.batch)["score"]

    def z(self, phase: str) -> dict[int, torch.Tensor]:
        if phase not in self._z:
            self._z[phase] = output_cache(self.models[phase], self.batch.tokens)
        return self._z[phase]

    def means(self, phase: str) -> dict[int, torch.Tensor]:
        if phase not in self._means:
            self._means[phase] = group_means(self.models[phase], self.batch)
        return self._means[phase]

    def s(self, phase: str) -> np.ndarray:
        return self.scores[phase].detach().cpu().numpy().astype(float)


def _rows(prefix: str, values: dict[str, Interval]) -> dict[str, Interval]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def patched_into(runs: PhaseRuns, target: str, source: str, sets: list[list[Head]], index=None):
    """[len(sets), n] scores of `target` with each head set's whole output (W_O included) taken
    from `source` on the same prompts (an empty set: the target's own scores)."""
    batch = runs.batch if index is None else runs.batch.subset(index)
    z = runs.z(source) if index is None else {lay: t[index] for lay, t in runs.z(source).items()}
    own = runs.s(target) if index is None else runs.s(target)[index.numpy()]
    out = np.tile(own, (len(sets), 1))
    filled = [i for i, s in enumerate(sets) if s]
    if filled:
        scored = patch_outputs(
            runs.models[target], runs.models[source], batch, [sets[i] for i in filled], z, sets_per_pass=32
        )
        out[filled] = as_numpy(scored)
    return out


def amplification_evidence(
    runs: PhaseRuns, base_circuit: set[Head], clean_circuit: set[Head], seed: int
) -> dict[str, Interval]:
    """Where the base -> clean gain lives, and the same for base -> control when there is one."""
    labels = component_labels(runs.models["base"])
    members = sorted(base_circuit)
    others = [h for h in labels if h not in base_circuit]
    joined = sorted(clean_circuit - base_circuit)
    index = resample_index(len(runs.batch), seed)
    base = runs.s("base")
    dla = as_numpy(component_dla(runs.models["base"], runs.batch))  # [n, components]
    member_mask = np.array([h in base_circuit for h in labels])
    out: dict[str, Interval] = {
        # if every head's direct effect grew by the same factor, members would carry this share
        "uniform_share": boot_ratio(dla[:, member_mask].sum(1), dla.sum(1), index),
        "heads_joined": Interval(float(len(joined)), float("nan"), float("nan")),
    }
    for tuned, suffix in (("clean", ""), ("control", "_control")):
        if tuned not in runs.models:
            continue
        gain = runs.s(tuned) - base
        member, other, join = patched_into(runs, "base", tuned, [members, others, joined])
        out[f"gain{suffix}"] = boot_mean(gain, index)
        out[f"member_share{suffix}"] = boot_ratio(member - base, gain, index)
        out[f"nonmember_share{suffix}"] = boot_ratio(other - base, gain, index)
        out[f"joined_share{suffix}"] = boot_ratio(join - base, gain, index)
        if out[f"member_share{suffix}"].applicable:
            out[f"member_minus_nonmember{suffix}"] = boot_stat(
                lambda m, o, g: (m - o) / g, [member - base, other - base, gain], index
            )
        else:
            out[f"member_minus_nonmember{suffix}"] = Interval.nan()
    return _rows("amplification", out)


@dataclass
class LocalizationResult:
    measures: dict[str, Interval]
    top_heads: list[Head]
    per_head: dict[str, np.ndarray]  # change -> [heads] mean single-head effect on the measuring half


def _halves(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.from_numpy(np.random.default_rng(10_000 + seed).permutation(n))
    return order[: n // 2].sort().values, order[n // 2 :].sort().values


def _concentration(top: list[int]):
    return lambda d: np.abs(d[top]).sum(0) / np.abs(d).sum(0)


def localization_evidence(runs: PhaseRuns, k: int, n_random: int, seed: int) -> LocalizationResult:
    """Is the clean -> poisoned change carried by a few heads, more than chance and more than an
    ordinary fine-tune of the same length concentrates its change?"""
    labels = component_labels(runs.models["clean"])
    clean = runs.s("clean")
    select, held = _halves(len(clean), seed)
    sel, hel = select.numpy(), held.numpy()
    index_all = resample_index(len(clean), seed)
    index_held = resample_index(len(hel), seed + 1)
    rng = random.Random(seed)
    out: dict[str, Interval] = {}
    per_head, tops, deltas = {}, {}, {}
    for change in ("poisoned", "control"):
        if change not in runs.models:
            continue
        delta = patched_into(runs, "clean", change, [[h] for h in labels]) - clean[None]  # [heads, n]
        top = [int(i) for i in np.argsort(-np.abs(delta[:, sel].mean(1)), kind="stable")[:k]]
        tops[change], deltas[change] = top, delta
        per_head[change] = delta[:, hel].mean(1)
        key = "" if change == "poisoned" else "_control"
        out[f"concentration{key}"] = boot_stat(_concentration(top), [delta[:, hel]], index_held)
    top = tops["poisoned"]
    gap = runs.s("poisoned") - clean
    out["drop"] = boot_mean(gap, index_all)
    out["uniform_concentration"] = Interval(k / len(labels), float("nan"), float("nan"))
    top_heads = [labels[i] for i in top]
    random_sets = [matched_sample(rng, labels, top_heads) for _ in range(n_random)]
    joint = patched_into(runs, "clean", "poisoned", [top_heads, *random_sets], index=held)
    held_gap = gap[hel]
    share = boot_ratio(joint[0] - clean[hel], held_gap, index_held)
    out["top_share"] = share
    if share.applicable:
        random_shares = (joint[1:] - clean[hel][None]).mean(1) / held_gap.mean()
        out["random_share"] = Interval(
            float(random_shares.mean()), *map(float, np.percentile(random_shares, [2.5, 97.5]))
        )
        out["p_random"] = Interval(permutation_p(share.value, random_shares), float("nan"), float("nan"))
    else:
        out["random_share"] = out["p_random"] = Interval.nan()
    if "control" in tops:
        ctrl_top = tops["control"]
        out["concentration_excess"] = boot_stat(
            lambda p, c: _concentration(top)(p) - _concentration(ctrl_top)(c),
            [deltas["poisoned"][:, hel], deltas["control"][:, hel]],
            index_held,
        )
    else:
        out["concentration_excess"] = Interval.nan()
    return LocalizationResult(_rows("localization", out), top_heads, per_head)


def normalized_faithfulness(f_circuit, f_empty, f_model):
    """(F(C) - F(empty)) / (F(M) - F(empty)): 0 for the empty circuit, 1 for the whole model."""
    return (f_circuit - f_empty) / (f_model - f_empty)


def circuit_runs(runs: PhaseRuns, phase: str, circuits: list[set[Head]]) -> tuple[np.ndarray, np.ndarray]:
    """(F(empty) [n], F(C) [len(circuits), n]): everything outside each circuit mean-ablated
    with this model's own per-template counterfactual means."""
    model = runs.models[phase]
    labels = component_labels(model)
    sets = [labels] + [[h for h in labels if h not in c] for c in circuits]
    scores = as_numpy(
        patch_each_set(model, runs.batch, runs.batch.tokens, runs.means(phase), sets, sets_per_pass=32)
    )
    return scores[0], scores[1:]


def plasticity_evidence(
    runs: PhaseRuns, base_circuit: set[Head], localized: list[Head], n_random: int, seed: int
) -> dict[str, Interval]:
    """Does retraining bring back behaviour, the poisoned heads, and the base circuit?"""
    index = resample_index(len(runs.batch), seed + 2)
    clean, poisoned, retrain = runs.s("clean"), runs.s("poisoned"), runs.s("retrain")
    moved = retrain - poisoned
    out = {
        "behaviour_recovery": boot_ratio(moved, clean - poisoned, index),
        "behaviour_recovery_to_base": boot_ratio(moved, runs.s("base") - poisoned, index),
    }
    q_poisoned, q_retrain = (
        patched_into(runs, "clean", "poisoned", [localized]),
        patched_into(runs, "clean", "retrain", [localized]),
    )
    if boot_mean(q_poisoned[0] - clean, index).excludes_zero():
        out["localized_recovery"] = boot_stat(
            lambda r, p: 1 - np.abs(r) / np.abs(p), [q_retrain[0] - clean, q_poisoned[0] - clean], index
        )
    else:
        out["localized_recovery"] = Interval.nan()
    labels = component_labels(runs.models["retrain"])
    rng = random.Random(seed)
    random_circuits = [set(matched_sample(rng, labels, base_circuit)) for _ in range(n_random)]
    parts, usable = {}, {}
    for phase in ("retrain", "clean", "control"):
        if phase not in runs.models:
            continue
        circuits = [base_circuit] + (random_circuits if phase == "retrain" else [])
        f_empty, f_c = circuit_runs(runs, phase, circuits)
        parts[phase] = (f_c, f_empty, runs.s(phase))
        # normalised faithfulness divides by F(M) - F(empty): not applicable within noise
        usable[phase] = boot_mean(parts[phase][2] - f_empty, index).excludes_zero()
        out[f"faithfulness_{phase}"] = (
            boot_stat(normalized_faithfulness, [f_c[0], f_empty, parts[phase][2]], index)
            if usable[phase]
            else Interval.nan()
        )
    f_c, f_empty, f_model = parts["retrain"]
    if usable["retrain"]:
        random_faith = normalized_faithfulness(f_c[1:].mean(1), f_empty.mean(), f_model.mean())
        out["faithfulness_random"] = Interval(
            float(random_faith.mean()), *map(float, np.percentile(random_faith, [2.5, 97.5]))
        )
        out["p_random"] = Interval(
            permutation_p(out["faithfulness_retrain"].value, random_faith), float("nan"), float("nan")
        )
        # the base circuit against the average random circuit of its size, prompts paired
        out["faithfulness_excess"] = boot_stat(
            lambda c, r, e, m: normalized_faithfulness(c, e, m) - normalized_faithfulness(r, e, m),
            [f_c[0], f_c[1:].mean(0), f_empty, f_model],
            index,
        )
    else:
        out["faithfulness_random"] = out["p_random"] = out["faithfulness_excess"] = Interval.nan()
    references = [p for p in ("clean", "control") if p in parts]
    arrays = [parts["retrain"][0][0], parts["retrain"][1], parts["retrain"][2]]
    for p in references:
        arrays += [parts[p][0][0], parts[p][1], parts[p][2]]

    def gap(*a):
        own = normalized_faithfulness(a[0], a[1], a[2])
        refs = [normalized_faithfulness(a[i], a[i + 1], a[i + 2]) for i in range(3, len(a), 3)]
        return own - np.minimum.reduce(refs) if len(refs) > 1 else own - refs[0]

    if not all(usable[p] for p in ["retrain", *references]):
        out["faithfulness_gap"] = Interval.nan()
        return _rows("neuroplasticity", out)
    out["faithfulness_gap"] = boot_stat(gap, arrays, index)
    return _rows("neuroplasticity", out)


def repair_evidence(
    runs: PhaseRuns, repaired: np.ndarray, repaired_random: np.ndarray, seed: int
) -> dict[str, Interval]:
    """Training only the localized heads against training as many random other heads."""
    index = resample_index(len(runs.batch), seed + 3)
    clean, poisoned = runs.s("clean"), runs.s("poisoned")
    drop = clean - poisoned
    out = {
        "recovery": boot_ratio(repaired - poisoned, drop, index),
        "random_recovery": boot_ratio(repaired_random - poisoned, drop, index),
    }
    out["advantage"] = (
        boot_stat(lambda a, b, d: (a - b) / d, [repaired - poisoned, repaired_random - poisoned, drop], index)
        if out["recovery"].applicable
        else Interval.nan()
    )
    return _rows("repair", out)
