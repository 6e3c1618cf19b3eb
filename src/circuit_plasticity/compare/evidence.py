"""The models of one seed run on the same held-out prompts, and the two views of a change.

Every model of a seed is run on the same prompts and every measure of the verdicts is a
function of per-prompt vectors, so one shared bootstrap index keeps paired comparisons paired.
`PhaseRuns` holds the models and computes each run once per metric: the per-prompt scores, the
head outputs (what carries a change), the ablation references, the parameter partition (where
a change lives).

Two views of a change between models A and B, per component (docs/analysis.md, "Verdicts"):
- carrier: B's score with the component's *output* taken from A (`patched_into`); an output
  holds every upstream change that flows through it;
- origin: B's score with the component's *weights* taken from A (`weights_into`); the score
  moves only by what that component's own parameters changed.

A `Method` is the ablation (mean over the counterfactual prompts of each group, or each
prompt's own counterfactual) and the metric (the task's score, or the probability of the right
answer) that the evidence is measured with; every verdict is recomputed under each method of
`METHODS` and marked fragile where one disagrees.

The findings' evidence lives beside this module: compare/amplification.py,
compare/localization.py, compare/plasticity.py; targeted repair is here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from circuit_plasticity.analysis.ablation import group_means
from circuit_plasticity.analysis.metrics import METRICS, evaluate
from circuit_plasticity.analysis.parameters import Partition, parameter_partition
from circuit_plasticity.analysis.patching import output_cache, patch_each_set
from circuit_plasticity.compare.cmap import patch_outputs
from circuit_plasticity.compare.origin import weight_patched_scores
from circuit_plasticity.compare.stats import Interval, as_numpy, boot_ratio, boot_stat, resample_index
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]
ABLATIONS = ("mean", "counterfactual")


@dataclass(frozen=True)
class Method:
    """How the evidence is measured: the ablation of everything outside a circuit, the metric."""

    ablation: str = "mean"
    metric: str = "score"

    @property
    def name(self) -> str:
        if self == Method():
            return "main"
        return self.metric if self.ablation == "mean" else f"{self.ablation}-ablation"


MAIN = Method()
METHODS = (MAIN, Method(ablation="counterfactual"), Method(metric="p_answer"))


ALL_METRICS = tuple(METRICS)  # every method's metric, computed in one patched run


@dataclass
class PhaseRuns:
    """The models of one seed on the shared prompts, and what later steps reuse.

    Every patched run is scored under all metrics at once (`ALL_METRICS`) and kept in `memo`
    by what was patched, so a method that differs only in its metric costs no forward pass
    where it patches the same sets."""

    models: dict  # phase -> TransformerBridge
    batch: TaskBatch
    _z: dict[str, dict] = field(default_factory=dict)
    _replacement: dict[tuple[str, str], dict] = field(default_factory=dict)
    _partition: Partition | None = None
    memo: dict = field(default_factory=dict)

    @property
    def scores(self) -> dict[str, torch.Tensor]:
        """phase -> per-prompt task score (the main metric)."""
        return {p: torch.from_numpy(self.s(p)) for p in self.models}

    def batch_for(self, metric: str | tuple[str, ...] = "score") -> TaskBatch:
        key = ("batch", metric)
        if key not in self.memo:
            self.memo[key] = self.batch if metric == self.batch.metric else self.batch.with_metric(metric)
        return self.memo[key]

    def scored(self, key: tuple, run) -> dict[str, np.ndarray]:
        """metric -> array: `run(batch scored by every metric)` ([..., n, metrics]), once per key."""
        if key not in self.memo:
            values = as_numpy(run(self.batch_for(ALL_METRICS)))
            self.memo[key] = {m: values[..., i] for i, m in enumerate(ALL_METRICS)}
        return self.memo[key]

    def s(self, phase: str, metric: str = "score") -> np.ndarray:
        """[n] per-prompt scores of `phase` under `metric`."""
        return self.scored(("scores", phase), lambda b: evaluate(self.models[phase], b)["score"])[metric]

    def z(self, phase: str) -> dict:
        """Every component's output on the clean prompts (what carrier patching takes)."""
        if phase not in self._z:
            self._z[phase] = output_cache(self.models[phase], self.batch.tokens)
        return self._z[phase]

    def replacement(self, phase: str, ablation: str) -> dict:
        """What an ablated component's output becomes: its per-group mean over the
        counterfactual prompts, or its output on each prompt's own counterfactual."""
        key = (phase, ablation)
        if key not in self._replacement:
            model = self.models[phase]
            self._replacement[key] = (
                group_means(model, self.batch)
                if ablation == "mean"
                else output_cache(model, self.batch.corrupted)
            )
        return self._replacement[key]

    def partition(self) -> Partition:
        """Who owns every parameter entry (one architecture for all phases)."""
        if self._partition is None:
            self._partition = parameter_partition(next(iter(self.models.values())))
        return self._partition


def rows(prefix: str, values: dict[str, Interval]) -> dict[str, Interval]:
    return {f"{prefix}_{k}": v for k, v in values.items()}


def point(value: float) -> Interval:
    return Interval(float(value), float("nan"), float("nan"))


def _sets_key(sets) -> tuple:
    return tuple(tuple(s) for s in sets)


def _index_key(index) -> bytes | None:
    return None if index is None else np.asarray(index).tobytes()


def _patched(runs: PhaseRuns, kind: str, target: str, source: str, sets, index, metric: str, patch):
    """[len(sets), n] of `patch(batch, filled sets)`, empty sets scoring as the target itself."""

    def run(batch: TaskBatch):
        sub = batch if index is None else batch.subset(torch.as_tensor(index))
        own = evaluate(runs.models[target], sub)["score"]
        out = own[None].repeat(len(sets), *[1] * own.dim())
        filled = [i for i, s in enumerate(sets) if s]
        if filled:
            out[filled] = patch(sub, [sets[i] for i in filled]).to(out)
        return out

    key = (kind, target, source, _sets_key(sets), _index_key(index))
    return runs.scored(key, run)[metric]


def patched_into(
    runs: PhaseRuns, target: str, source: str, sets, index=None, metric: str = "score"
) -> np.ndarray:
    """Carrier view: [len(sets), n] scores of `target` with each component set's whole output
    (W_O included) taken from `source` on the same prompts (an empty set: the target itself)."""

    def patch(batch: TaskBatch, filled):
        z = runs.z(source)
        if index is not None:
            z = {key: t[torch.as_tensor(index)] for key, t in z.items()}
        return patch_outputs(runs.models[target], runs.models[source], batch, filled, z, sets_per_pass=32)

    return _patched(runs, "carrier", target, source, sets, index, metric, patch)


def weights_into(
    runs: PhaseRuns, target: str, source: str, sets, index=None, metric: str = "score"
) -> np.ndarray:
    """Origin view: [len(sets), n] scores of `target` with each set's components' weights
    (parameter-partition names: a1.h0, m2, embed, norms, ...) taken from `source`."""

    def patch(batch: TaskBatch, filled):
        return weight_patched_scores(
            runs.models[target], runs.models[source], batch, filled, runs.partition()
        )

    return _patched(runs, "origin", target, source, sets, index, metric, patch)


def ablated_scores(runs: PhaseRuns, phase: str, sets, method: Method) -> np.ndarray:
    """[len(sets), n]: `phase` with each set of components ablated (method.ablation)."""

    def run(batch: TaskBatch):
        replacement = runs.replacement(phase, method.ablation)
        return patch_each_set(runs.models[phase], batch, batch.tokens, replacement, sets, sets_per_pass=32)

    return runs.scored(("ablated", phase, method.ablation, _sets_key(sets)), run)[method.metric]


def repair_evidence(
    runs: PhaseRuns,
    repaired: dict[str, np.ndarray],
    repaired_random: dict[str, np.ndarray],
    seed: int,
    method: Method = MAIN,
) -> dict[str, Interval]:
    """Training only the localized components against training as many random others; the
    repaired models' scores per metric (`repaired[metric]`)."""
    index = resample_index(len(runs.batch), seed + 3)
    clean, poisoned = runs.s("clean", method.metric), runs.s("poisoned", method.metric)
    mine, other = repaired[method.metric], repaired_random[method.metric]
    drop = clean - poisoned
    out = {
        "recovery": boot_ratio(mine - poisoned, drop, index),
        "random_recovery": boot_ratio(other - poisoned, drop, index),
    }
    out["advantage"] = (
        boot_stat(lambda a, b, d: (a - b) / d, [mine - poisoned, other - poisoned, drop], index)
        if out["recovery"].applicable
        else Interval.nan()
    )
    return rows("repair", out)
