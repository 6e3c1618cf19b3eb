"""The study's three findings as measurements, with the controls the study lacked.

- amplification (base -> clean fine-tune): per-head effect ratios, and which heads join the
  circuit (backups recruited) or leave it;
- localization (base -> poisoned): the share of the base -> poisoned score change carried by the
  top-k heads (chosen on one half of the prompts, measured jointly on the other half by patching
  the poisoned heads into the base model) against matched random sets of k heads (same layer
  composition), and whether the top-k heads are base-circuit members;
- neuroplasticity (poisoned -> retrained): per-head recovery 1 - |retrained - base| / |poisoned -
  base|, the base circuit's faithfulness inside the retrained model, and node/edge Jaccard overlap
  of the base and retrained circuits (do the same heads re-form, or do others take over?).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.analysis.faithfulness import evaluate_circuit
from circuit_plasticity.analysis.hooks import head_labels
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.patching import activation_cache, patch_each_set
from circuit_plasticity.compare.cmap import cross_model_patch
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def circuit_overlap(a: Circuit, b: Circuit) -> dict[str, float]:
    def edges(c: Circuit) -> set:
        return {(e.sender, e.receiver, e.input) for e in c.edges}

    return {"node_jaccard": jaccard(a.head_set(), b.head_set()), "edge_jaccard": jaccard(edges(a), edges(b))}


def per_head_change(before: pd.DataFrame, after: pd.DataFrame, measure: str) -> pd.DataFrame:
    """Join two per-head tables on (layer, head): before, after, difference and ratio."""
    joined = before[["layer", "head", measure]].merge(
        after[["layer", "head", measure]], on=["layer", "head"], suffixes=("_before", "_after")
    )
    b, a = joined[f"{measure}_before"], joined[f"{measure}_after"]
    return joined.assign(measure=measure, change=a - b, ratio=a / b.where(b.abs() > 1e-9))


def amplification(
    base: pd.DataFrame,
    tuned: pd.DataFrame,
    base_circuit: Circuit,
    tuned_circuit: Circuit,
    measure: str = "dla",
) -> tuple[pd.DataFrame, dict]:
    table = per_head_change(base, tuned, measure)
    table["in_base_circuit"] = [(r.layer, r.head) in base_circuit.head_set() for r in table.itertuples()]
    members = table[table.in_base_circuit]
    summary = {
        "circuit_members": len(members),
        "members_grown": int((members.change > 0).sum()),
        "median_member_ratio": float(members.ratio.median()) if len(members) else float("nan"),
        "joined": sorted(f"{lay}.{h}" for lay, h in tuned_circuit.head_set() - base_circuit.head_set()),
        "left": sorted(f"{lay}.{h}" for lay, h in base_circuit.head_set() - tuned_circuit.head_set()),
    }
    return table, summary


@dataclass
class Localization:
    k: int
    top_heads: list[Head]
    top_share: float  # joint share of the base -> poisoned gap on held-out prompts
    random_mean: float  # random k-sets with the top set's layer composition
    random_low: float
    random_high: float
    p_value: float  # P(random share >= top share), with the +1 correction
    any_random_mean: float  # random k-sets drawn from all heads
    any_random_high: float
    any_p_value: float
    top_in_base_circuit: float  # fraction of the top-k heads that are base-circuit members
    per_head: pd.DataFrame

    def as_row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "per_head" and k != "top_heads"} | {
            "top_heads": ",".join(f"{lay}.{h}" for lay, h in self.top_heads)
        }


@torch.no_grad()
def localization(
    base_model,
    poisoned_model,
    batch: TaskBatch,
    base_circuit: Circuit,
    k: int = 3,
    n_random: int = 200,
    seed: int = 0,
) -> Localization:
    """Is the base -> poisoned change carried by a few heads? Top-k against matched random k-sets."""
    half = len(batch) // 2
    select, held = batch.subset(slice(0, half)), batch.subset(slice(half, None))
    per_head = cross_model_patch(poisoned_model, base_model, select)
    order = per_head.assign(mag=per_head.delta.abs()).sort_values("mag", ascending=False)
    top = [(int(r.layer), int(r.head)) for r in order.head(k).itertuples()]
    labels = head_labels(base_model)
    by_layer: dict[int, list[Head]] = {}
    for h in labels:
        by_layer.setdefault(h[0], []).append(h)
    rng = random.Random(seed)
    matched, anywhere = [], []
    for _ in range(n_random):
        pick: list[Head] = []
        for layer in sorted({h[0] for h in top}):  # the top set's number of heads per layer
            pick += rng.sample(by_layer[layer], sum(1 for h in top if h[0] == layer))
        matched.append(pick)
        anywhere.append(rng.sample(labels, k))
    source = activation_cache(poisoned_model, held.tokens, "z")
    base_scores = task_score(end_logits(base_model(held.tokens), held), held)
    poisoned_score = float(task_score(end_logits(poisoned_model(held.tokens), held), held).mean())
    gap = poisoned_score - float(base_scores.mean())
    shares = (
        patch_each_set(base_model, held, held.tokens, source, [top, *matched, *anywhere], sets_per_pass=32)
        - base_scores[None]
    ).mean(1) / gap
    top_share = float(shares[0])
    shares = shares.cpu()
    same_layers, any_heads = shares[1 : 1 + n_random].numpy(), shares[1 + n_random :].numpy()

    def p_value(control: np.ndarray) -> float:
        return float((1 + (control >= top_share).sum()) / (1 + len(control)))

    return Localization(
        k=k,
        top_heads=top,
        top_share=top_share,
        random_mean=float(same_layers.mean()),
        random_low=float(np.percentile(same_layers, 2.5)),
        random_high=float(np.percentile(same_layers, 97.5)),
        p_value=p_value(same_layers),
        any_random_mean=float(any_heads.mean()),
        any_random_high=float(np.percentile(any_heads, 97.5)),
        any_p_value=p_value(any_heads),
        top_in_base_circuit=sum(h in base_circuit.head_set() for h in top) / k,
        per_head=per_head,
    )


def recovery(
    base: pd.DataFrame,
    poisoned: pd.DataFrame,
    retrained: pd.DataFrame,
    measure: str = "dla",
    min_change: float = 1e-3,
) -> pd.DataFrame:
    """Per-head recovery = 1 - |retrained - base| / |poisoned - base| (1: fully back, 0: still
    poisoned, < 0: moved further away); NaN where poisoning changed the head by < min_change."""
    key = ["layer", "head"]
    t = base[key + [measure]].rename(columns={measure: "base"})
    t = t.merge(poisoned[key + [measure]].rename(columns={measure: "poisoned"}), on=key)
    t = t.merge(retrained[key + [measure]].rename(columns={measure: "retrained"}), on=key)
    moved = (t.poisoned - t.base).abs()
    rec = 1 - (t.retrained - t.base).abs() / moved.where(moved >= min_change)
    return t.assign(measure=measure, recovery=rec)


def neuroplasticity(
    retrained_model, batch: TaskBatch, base_circuit: Circuit, retrained_circuit: Circuit
) -> dict[str, float]:
    scores = evaluate_circuit(retrained_model, batch, base_circuit.head_set())
    return {
        "base_circuit_faithfulness_in_retrained": scores.faithfulness,
        **circuit_overlap(base_circuit, retrained_circuit),
    }
