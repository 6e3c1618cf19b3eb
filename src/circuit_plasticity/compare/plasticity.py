"""Neuroplasticity: does retraining bring back the behaviour, the poisoned components themselves,
and the base circuit?

- behaviour recovery: (retrained - poisoned) / (clean - poisoned), toward the clean model the
  poison started from (toward the base reported apart);
- the localized components' own recovery by weights: for each component c of the localized
  set, q_X(c) = the clean model's score change with c's weights taken from X; recovery =
  1 - sum_c |q_retrain(c)| / sum_c |q_poisoned(c)|. Weights, not outputs: a retrain that
  compensates downstream (the poison in a0.h1, only a1.h0 retrained) leaves a0.h1's weights
  poisoned and so recovers nothing here, while patching outputs would credit a0.h1 with the
  repair flowing through it;
- the base circuit's normalised faithfulness in the retrained model, against the clean and
  control models (retrained minus the lower of the two), and against random circuits of its
  size and kind **by rank** (the permutation p of the base circuit among them, its floor and
  power: compare/nulls.py), the same test run in the clean model beside it (a circuit that does
  not beat random circuits of its size even there leaves nothing for the test to say about
  retraining); the excess over their mean is reported, not judged.
"""

from __future__ import annotations

import random

import numpy as np

from circuit_plasticity.analysis.hooks import component_labels, matched_sample
from circuit_plasticity.compare.evidence import MAIN, Method, PhaseRuns, ablated_scores, rows, weights_into
from circuit_plasticity.compare.nulls import null_test
from circuit_plasticity.compare.stats import Interval, boot_mean, boot_ratio, boot_stat, resample_index
from circuit_plasticity.components import component_name

Head = tuple[int, int]


def normalized_faithfulness(f_circuit, f_empty, f_model):
    """(F(C) - F(empty)) / (F(M) - F(empty)): 0 for the empty circuit, 1 for the whole model."""
    return (f_circuit - f_empty) / (f_model - f_empty)


def circuit_runs(runs: PhaseRuns, phase: str, circuits, method: Method) -> tuple[np.ndarray, np.ndarray]:
    """(F(empty) [n], F(C) [len(circuits), n]): everything outside each circuit ablated."""
    labels = component_labels(runs.models[phase])
    sets = [labels] + [[h for h in labels if h not in c] for c in circuits]
    scores = ablated_scores(runs, phase, sets, method)
    return scores[0], scores[1:]


def localized_recovery(runs: PhaseRuns, localized: list[Head], index, metric: str) -> tuple[Interval, dict]:
    """The localized components' own recovery by weights, and each one's (module docstring)."""
    clean = runs.s("clean", metric)
    names = [component_name(c) for c in localized]
    q_p = weights_into(runs, "clean", "poisoned", [[n] for n in names], metric=metric) - clean[None]
    q_r = weights_into(runs, "clean", "retrain", [[n] for n in names], metric=metric) - clean[None]
    each = {
        n: float(1 - abs(r.mean()) / abs(p.mean())) if abs(p.mean()) > 1e-9 else float("nan")
        for n, p, r in zip(names, q_p, q_r, strict=True)
    }
    if not boot_mean(np.abs(q_p).sum(0), index).excludes_zero():
        return Interval.nan(), each
    value = boot_stat(lambda r, p: 1 - np.abs(r).sum(0) / np.abs(p).sum(0), [q_r, q_p], index)
    return value, each


def plasticity_evidence(
    runs: PhaseRuns,
    base_circuit: set[Head],
    localized: list[Head],
    n_random: int,
    seed: int,
    method: Method = MAIN,
    margin: float = 0.1,
) -> tuple[dict[str, Interval], dict[str, float]]:
    """(measures, each localized component's own recovery by weights)."""
    metric = method.metric
    index = resample_index(len(runs.batch), seed + 2)
    clean, poisoned, retrain = (runs.s(p, metric) for p in ("clean", "poisoned", "retrain"))
    moved = retrain - poisoned
    out = {
        "behaviour_recovery": boot_ratio(moved, clean - poisoned, index),
        "behaviour_recovery_to_base": boot_ratio(moved, runs.s("base", metric) - poisoned, index),
    }
    out["localized_recovery"], each = localized_recovery(runs, localized, index, metric)
    labels = component_labels(runs.models["retrain"])
    rng = random.Random(seed)
    random_circuits = [set(matched_sample(rng, labels, base_circuit)) for _ in range(n_random)]
    parts, usable = {}, {}
    for phase in ("retrain", "clean", "control"):
        if phase not in runs.models:
            continue
        circuits = [base_circuit] + (random_circuits if phase in ("retrain", "clean") else [])
        f_empty, f_c = circuit_runs(runs, phase, circuits, method)
        parts[phase] = (f_c, f_empty, runs.s(phase, metric))
        # normalised faithfulness divides by F(M) - F(empty): not applicable within noise
        usable[phase] = boot_mean(parts[phase][2] - f_empty, index).excludes_zero()
        out[f"faithfulness_{phase}"] = (
            boot_stat(normalized_faithfulness, [f_c[0], f_empty, parts[phase][2]], index)
            if usable[phase]
            else Interval.nan()
        )
    for phase, name in (("clean", "random_circuits_clean"), ("retrain", "random_circuits")):
        f_c, f_empty, f_model = parts[phase]
        if usable[phase]:
            random_faith = normalized_faithfulness(f_c[1:].mean(1), f_empty.mean(), f_model.mean())
            out |= null_test(out[f"faithfulness_{phase}"].value, random_faith, margin).rows(name)
    f_c, f_empty, f_model = parts["retrain"]
    if usable["retrain"]:
        out["faithfulness_excess"] = boot_stat(
            lambda c, r, e, m: normalized_faithfulness(c, e, m) - normalized_faithfulness(r, e, m),
            [f_c[0], f_c[1:].mean(0), f_empty, f_model],
            index,
        )
    else:
        out["random_circuits_p"] = out["faithfulness_excess"] = Interval.nan()
    references = [p for p in ("clean", "control") if p in parts]
    if not all(usable[p] for p in ["retrain", *references]):
        out["faithfulness_gap"] = Interval.nan()
        return rows("neuroplasticity", out), each
    arrays = [parts["retrain"][0][0], parts["retrain"][1], parts["retrain"][2]]
    for p in references:
        arrays += [parts[p][0][0], parts[p][1], parts[p][2]]

    def gap(*a):
        own = normalized_faithfulness(a[0], a[1], a[2])
        refs = [normalized_faithfulness(a[i], a[i + 1], a[i + 2]) for i in range(3, len(a), 3)]
        return own - np.minimum.reduce(refs) if len(refs) > 1 else own - refs[0]

    out["faithfulness_gap"] = boot_stat(gap, arrays, index)
    return rows("neuroplasticity", out), each
