"""Circuit evaluation: faithfulness, completeness, minimality, sparsity.

Everything outside the circuit is mean-ablated (per-group means over the counterfactual
distribution: IOI per template, Greater-Than per century), and the circuit's score F(C) is
compared with the model's F(M) and with the empty circuit's F(empty) (every component
mean-ablated). Components are heads and, where the model has them, MLPs (layer, -1), ablated
alike: a circuit may keep an MLP, and everything it does not keep is replaced by its mean.
- faithfulness = F(C) / F(M) (Wang et al. also report |F(M) - F(C)|);
- normalized faithfulness = (F(C) - F(empty)) / (F(M) - F(empty)) (MIB's convention): 0 for
  the empty circuit and 1 for the whole model by construction, so a circuit is not credited
  for the score that survives ablating every head (direct paths, biases, MLPs);
- completeness: for each role class K of the circuit, |F(C \\ K) - F(M \\ K)| / |F(M)|;
- minimality (Wang et al.): for every head v, max over K subsets of C \\ {v} of
  |F(C \\ (K u {v})) - F(C \\ K)|. Wang et al. pick K by hand; we search K = {}, K = v's role
  class minus v, and a greedy search (`minimality_steps` rounds, each adding the head that
  most raises the value); reported in score units and as a share of |F(M)|. The circuit is
  minimal at threshold t if every head's share is at least t (the study states no threshold:
  ours is a parameter, default 1 %);
- sparsity: the share of the model's components (heads and MLPs) in the circuit.
All ablated sets of one round run in one batched pass (`patching.patch_each_set`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from circuit_plasticity.analysis.ablation import group_means, knockout
from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.analysis.hooks import component_labels
from circuit_plasticity.analysis.metrics import clean_end_logits, task_score
from circuit_plasticity.analysis.patching import patch_each_set
from circuit_plasticity.components import component_name
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]
Kept = frozenset[Head]


@dataclass
class CircuitScores:
    model_score: float
    circuit_score: float
    faithfulness: float
    abs_gap: float
    completeness_gap: float
    minimality: dict[str, float]  # Wang et al.'s value per head, as a share of |F(M)|
    minimal: bool
    sparsity: float
    minimality_threshold: float
    empty_score: float = float("nan")  # F(empty): every head and MLP mean-ablated
    normalized_faithfulness: float = float("nan")  # (F(C) - F(empty)) / (F(M) - F(empty))
    minimality_abs: dict[str, float] | None = None  # the same value in score units
    minimality_k: dict[str, list[str]] | None = None  # the K that attains it
    knockout_drop: dict[str, float] | None = None  # (F(C) - F(C \ {v})) / |F(M)|, signed

    def as_row(self) -> dict[str, float]:
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, dict | type(None))}


@torch.no_grad()
def circuit_score(model, batch: TaskBatch, keep: set[Head], means=None) -> float:
    """F(C): mean score with every component (head, MLP) outside `keep` mean-ablated."""
    outside = [h for h in component_labels(model) if h not in keep]
    return (
        float(knockout(model, batch, outside, means).mean())
        if outside
        else float(task_score(clean_end_logits(model, batch), batch).mean())
    )


@torch.no_grad()
def ablated_scores(model, batch: TaskBatch, ablate_sets: list[list[Head]], means) -> list[float]:
    """Mean score with each set of heads mean-ablated jointly: one batched pass for all sets."""
    scores = patch_each_set(model, batch, batch.tokens, means, ablate_sets)
    return [float(s) for s in scores.mean(1)]


class _KeptScores:
    """F(kept) for many kept sets, memoised; `fill` evaluates the missing ones in one pass.

    The whole model's score is the unpatched run's, so F(M) is exact and identical wherever it
    appears (normalized faithfulness of the full circuit is 1 exactly)."""

    def __init__(self, model, batch: TaskBatch, means, f_model: float):
        self.model, self.batch, self.means = model, batch, means
        self.labels = component_labels(model)
        self.values: dict[Kept, float] = {frozenset(self.labels): f_model}

    def fill(self, kept_sets: Iterable[Kept]) -> None:
        missing = list(dict.fromkeys(k for k in kept_sets if k not in self.values))
        if not missing:
            return
        sets = [[h for h in self.labels if h not in k] for k in missing]
        for k, v in zip(missing, ablated_scores(self.model, self.batch, sets, self.means), strict=True):
            self.values[k] = v

    def __getitem__(self, kept: Kept) -> float:
        return self.values[kept]


def _gap(scores: _KeptScores, keep: Kept, v: Head, k: frozenset[Head]) -> float:
    """|F(C \\ (K u {v})) - F(C \\ K)|: what v adds once K is gone."""
    return abs(scores[keep - k - {v}] - scores[keep - k])


def _pairs(keep: Kept, v: Head, k: frozenset[Head]) -> list[Kept]:
    return [keep - k - {v}, keep - k]


def minimality_search(
    scores: _KeptScores, keep: Kept, classes: dict[str, set[Head]], steps: int
) -> dict[Head, tuple[float, frozenset[Head]]]:
    """Per head v: (max gap, its K) over K = {}, v's class minus v, and `steps` greedy rounds.

    A greedy round extends each head's current best K by the one head w that gives the
    largest gap; all candidates of all heads in a round are scored in one batched pass."""
    members = sorted(keep)
    role_of = {h: role for role, hs in classes.items() for h in hs}
    start: dict[Head, list[frozenset[Head]]] = {}
    for v in members:
        ks = [frozenset()]
        same = frozenset(classes.get(role_of.get(v, ""), set()) & keep) - {v}
        if same:
            ks.append(same)
        start[v] = ks
    scores.fill(s for v in members for k in start[v] for s in _pairs(keep, v, k))
    best = {v: max(((_gap(scores, keep, v, k), k) for k in start[v]), key=_by_gap) for v in members}
    frontier = {v: frozenset() for v in members}
    for _ in range(steps):
        cands = {v: [frontier[v] | {w} for w in members if w != v and w not in frontier[v]] for v in members}
        scores.fill(s for v in members for k in cands[v] for s in _pairs(keep, v, k))
        for v in members:
            if not cands[v]:
                continue
            top = max(((_gap(scores, keep, v, k), k) for k in cands[v]), key=_by_gap)
            frontier[v] = top[1]
            best[v] = max(best[v], top, key=_by_gap)
    return best


def _by_gap(item: tuple[float, frozenset[Head]]) -> tuple[float, int]:
    """Larger gap first; on ties the smaller K (K = {} wins ties, as the plain knockout)."""
    return (item[0], -len(item[1]))


@torch.no_grad()
def evaluate_circuit(
    model,
    batch: TaskBatch,
    circuit: Circuit | set[Head],
    minimality_threshold: float = 0.01,
    *,
    minimality_steps: int = 2,
) -> CircuitScores:
    """Faithfulness (plain and normalized), completeness, Wang et al.'s minimality, sparsity."""
    keep: Kept = frozenset(circuit.head_set() if isinstance(circuit, Circuit) else circuit)
    labels = component_labels(model)
    means = group_means(model, batch)
    f_model = float(task_score(clean_end_logits(model, batch), batch).mean())
    scale = max(abs(f_model), 1e-6)
    scores = _KeptScores(model, batch, means, f_model)
    classes: dict[str, set[Head]] = {}
    if isinstance(circuit, Circuit):
        for h in circuit.heads:
            classes.setdefault(h.role, set()).add(h.key)
    everything = frozenset(labels)
    class_sets = [(keep - k, everything - k) for k in classes.values()]
    scores.fill([keep, frozenset(), *(s for pair in class_sets for s in pair)])
    best = minimality_search(scores, keep, classes, minimality_steps)
    f_circuit, f_empty = scores[keep], scores[frozenset()]
    gaps = [abs(scores[c] - scores[m]) / scale for c, m in class_sets]
    minimality_abs = {component_name(v): gap for v, (gap, _) in best.items()}
    return CircuitScores(
        model_score=f_model,
        circuit_score=f_circuit,
        faithfulness=f_circuit / f_model if f_model else float("nan"),
        abs_gap=abs(f_model - f_circuit),
        completeness_gap=max(gaps) if gaps else 0.0,
        minimality={k: v / scale for k, v in minimality_abs.items()},
        minimal=all(v / scale >= minimality_threshold for v in minimality_abs.values()),
        sparsity=len(keep) / len(labels),
        minimality_threshold=minimality_threshold,
        empty_score=f_empty,
        normalized_faithfulness=normalized_faithfulness(f_circuit, f_model, f_empty),
        minimality_abs=minimality_abs,
        minimality_k={component_name(v): sorted(component_name(h) for h in k) for v, (_, k) in best.items()},
        knockout_drop={component_name(v): (f_circuit - scores[keep - {v}]) / scale for v in sorted(keep)},
    )


def normalized_faithfulness(f_circuit: float, f_model: float, f_empty: float, tol: float = 1e-6) -> float:
    """(F(C) - F(empty)) / (F(M) - F(empty)); NaN when the model and the empty circuit score
    alike (within `tol` of the larger magnitude), where the ratio means nothing."""
    denominator = f_model - f_empty
    if abs(denominator) <= tol * max(1.0, abs(f_model), abs(f_empty)):
        return float("nan")
    return (f_circuit - f_empty) / denominator
