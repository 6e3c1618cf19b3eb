"""Automatic circuit discovery following Wang et al.'s iteration, by path patching.

Components are heads and, where the model has them, MLPs (layer, -1), for every task.
1. components whose corrupted output, reaching the logits (directly or through the MLPs,
   which path patching recomputes), moves the score, in either sign. IOI heads are named by
   `classes.direct_role` (the heads table's rule): name mover, negative name mover,
   S-suppressor, S mover, else "direct_effect"; Greater-Than heads that attend END -> YY are
   year readers; an MLP whose clean output raises the score is a "greater" MLP
   (Greater-Than) or "mlp" (IOI); the others "direct_effect" / "mlp";
IOI then searches upstream:
2. components acting through the queries at END of every stage-1 head: S-inhibition;
3. components acting through the S-inhibition heads' values at S2: induction /
   duplicate-token (told apart by their attention scores);
4. components acting through the induction heads' keys at S1+1: previous-token.
Greater-Than searches one stage upstream: components acting through the stage-1 heads'
values at YY (they write the start year where the year readers read it): year encoders.
Receivers are always heads (MLP inputs are not yet receivers).
At every stage a head is selected by |effect| (either sign) and the next stage searches
upstream of all of them whatever their sign, since poisoned models flip signs.
The threshold is absolute: `share` x `reference_scale` (the study passes the base model's
|score| for every phase, so a model whose score triples does not lose members); without a
reference it is `share` x the model's own |score|. Effects are reported as shares of the
model's own score.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from circuit_plasticity.analysis.circuit import Circuit, CircuitHead, Edge
from circuit_plasticity.analysis.classes import DEFAULT_THRESHOLDS, direct_role
from circuit_plasticity.analysis.hooks import component_labels, head_labels
from circuit_plasticity.analysis.metrics import clean_end_logits, task_score
from circuit_plasticity.analysis.patching import Receivers, path_patch, z_cache
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]


@dataclass(frozen=True)
class DiscoveryConfig:
    share: float = 0.04  # |path-patching effect| / reference scale to join the circuit
    max_per_stage: int = 6  # keep at most this many heads per stage (largest |effect| first)
    attention: float = 0.15  # END->IO / END->S2 attention that names a direct head's role
    reference_scale: float | None = None  # score units of `share`; None: the model's own |score|
    copy: float = DEFAULT_THRESHOLDS.copy  # copy score a name mover needs, when it is measured
    direct_cap_factor: int = 2  # the direct stage keeps up to this x max_per_stage heads

    def threshold(self, model_score: float) -> float:
        """The absolute |effect| (score units) a head needs to join the circuit."""
        scale = abs(model_score) if self.reference_scale is None else abs(self.reference_scale)
        return self.share * max(scale, 1e-6)


def circuit_direct_role(
    records: dict[Head, dict[str, float]] | None, head: Head, effect: float, config: DiscoveryConfig
) -> str:
    """A direct-stage head's role by `classes.direct_role`; `effect` is its path-patching effect
    (corrupted - clean), so the head's own push along IO - S is -effect. Without attention
    records only the sign is known: name mover or negative name mover."""
    if records is None:
        return "name_mover" if effect < 0 else "negative_name_mover"
    r = records.get(head, {})
    copy = r.get("copy_score")
    role = direct_role(
        float(r.get("attn_end_io", 0.0)),
        float(r.get("attn_end_s2", 0.0)),
        -effect,
        config.attention,
        None if copy is None or pd.isna(copy) else float(copy),
        config.copy,
    )
    return role or "direct_effect"


def component_direct_role(
    task: str, records: dict[Head, dict] | None, part: Head, effect: float, config: DiscoveryConfig
) -> str:
    """The direct stage's role of a head or MLP on `task` (effect = corrupted - clean)."""
    if part[1] < 0:
        if -effect <= 0:
            return "mlp"
        return "greater_mlp" if task == "greater-than" else "mlp"
    if task == "greater-than":
        attn = float((records or {}).get(part, {}).get("attn_end_yy", 0.0) or 0.0)
        return "year_reader" if attn >= config.attention else "direct_effect"
    return circuit_direct_role(records, part, effect, config)


def _effects(
    model, batch: TaskBatch, receivers: Receivers, clean: torch.Tensor, caches, senders: list[Head]
) -> torch.Tensor:
    """[n_components] mean path-patching effect in score units (corrupted - clean)."""
    scores = path_patch(model, batch, receivers, senders, caches=caches)
    return (scores - clean[None]).mean(1)


def select_heads(
    effects: torch.Tensor, labels: list[Head], threshold: float, cap: int, exclude: set[Head]
) -> list[Head]:
    """Heads with |effect| >= threshold (either sign), largest |effect| first, at most `cap`."""
    order = torch.argsort(effects.abs(), descending=True, stable=True).tolist()
    chosen = [labels[i] for i in order if abs(float(effects[i])) >= threshold and labels[i] not in exclude]
    return chosen[:cap]


@dataclass
class Discovery:
    circuit: Circuit
    effects: pd.DataFrame  # layer, head, measure (path_<stage>), value: share of the model score


DEFAULT_DISCOVERY = DiscoveryConfig()
UPSTREAM = {  # per task: role, receiver input, position of the role
    "ioi": (
        ("s_inhibition", "q", "end"),
        ("induction", "v", "s2"),
        ("previous_token", "k", "s1+1"),
    ),
    "greater-than": (("year_encoder", "v", "yy"),),
}


def _upstream_role(role: str, records: dict | None, head: Head) -> str:
    """Stage 3 tells duplicate-token from induction heads by their attention scores."""
    if role != "induction" or not records:
        return role
    a = records.get(head, {})
    return "duplicate_token" if a.get("attn_s2_s1", 0) > a.get("induction", 0) else "induction"


@torch.no_grad()
def discover_circuit(
    model,
    batch: TaskBatch,
    model_name: str = "model",
    config: DiscoveryConfig = DEFAULT_DISCOVERY,
    attention: dict[Head, dict[str, float]] | None = None,
) -> Discovery:
    """The circuit of `model` on `batch` (clean vs its counterfactual: IOI's ABC prompts,
    Greater-Than's "01" prompts)."""
    labels = component_labels(model)
    clean = task_score(clean_end_logits(model, batch), batch)
    model_score = float(clean.mean())
    own = max(abs(model_score), 1e-6)
    threshold = config.threshold(model_score)
    heads: list[CircuitHead] = []
    edges: list[Edge] = []
    taken: set[Head] = set()
    tables: list[pd.DataFrame] = []

    def record(stage: str, effects: torch.Tensor) -> None:
        tables.append(
            pd.DataFrame(
                {
                    "layer": [h[0] for h in labels],
                    "head": [h[1] for h in labels],
                    "measure": f"path_{stage}",
                    "value": (effects / own).tolist(),
                }
            )
        )

    def add(h: Head, role: str, position: str, effect: float, receivers: list[Head] | None, kind: str):
        heads.append(CircuitHead(h[0], h[1], role, position, effect / own))
        taken.add(h)
        for r in receivers or ["logits"]:
            if r == "logits" or r[0] > h[0]:  # a head only reaches later layers
                edges.append(Edge(h, r, kind))

    caches = (z_cache(model, batch.tokens), z_cache(model, batch.corrupted))
    direct = _effects(model, batch, Receivers(), clean, caches, labels)
    record("logits", direct)
    cap = config.max_per_stage * config.direct_cap_factor
    found = select_heads(direct, labels, threshold, cap, taken)
    for h in found:
        e = float(direct[labels.index(h)])
        add(h, component_direct_role(batch.task, attention, h, e, config), "end", e, None, "logits")
    receivers = [h for h in found if h[1] >= 0]
    for role, kind, position in UPSTREAM[batch.task]:
        if not receivers:
            break
        recv_pos = "end" if kind == "q" else position
        receivers_at = Receivers(tuple(receivers), kind, recv_pos)
        effects = _effects(model, batch, receivers_at, clean, caches, labels)
        record(f"{kind}_of_{role}_receivers", effects)
        found = select_heads(effects, labels, threshold, config.max_per_stage, taken)
        for h in found:
            e = float(effects[labels.index(h)])
            add(h, _upstream_role(role, attention, h), position, e, receivers, kind)
        receivers = [h for h in found if h[1] >= 0]
    meta = {
        "share": config.share,
        "reference_scale": config.reference_scale,
        "threshold": threshold,
        "model_score": model_score,
        "n_prompts": len(batch),
    }
    circuit = Circuit(
        task=batch.task,
        model=model_name,
        heads=heads,
        edges=edges,
        n_model_heads=len(head_labels(model)),
        meta=meta,
    )
    return Discovery(circuit, pd.concat(tables, ignore_index=True))
