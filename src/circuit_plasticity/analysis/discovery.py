"""Automatic circuit discovery following Wang et al.'s iteration, by path patching.

1. heads whose corrupted output, reaching the logits directly, moves the score: name movers
   (the score falls and the head attends END -> IO >= 0.15), "s_suppressor" when it attends
   END -> S2 instead (it writes "not S" rather than copying IO), "direct_effect" when it attends
   to neither; negative name movers when the score rises;
2. heads acting through those heads' queries at END: S-inhibition;
3. heads acting through the S-inhibition heads' values at S2: induction / duplicate-token
   (told apart by their attention scores);
4. heads acting through the induction heads' keys at S1+1: previous-token.
A head is selected when |effect| >= `share` x the model's mean score (default 4 %, docs/analysis.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from circuit_plasticity.analysis.circuit import Circuit, CircuitHead, Edge
from circuit_plasticity.analysis.hooks import head_labels
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.patching import Receivers, path_patch, z_cache
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]


@dataclass(frozen=True)
class DiscoveryConfig:
    share: float = 0.04  # |path-patching effect| / model score to join the circuit
    max_per_stage: int = 6  # keep at most this many heads per stage (largest effects first)
    attention: float = 0.15  # END->IO / END->S2 attention that names a direct head's role


def _direct_role(attention: dict | None, head: Head, threshold: float) -> str:
    """Name mover if it reads IO at END, S-suppressor if it reads S2; else a plain direct effect."""
    if attention is None:
        return "name_mover"
    a = attention.get(head, {})
    io, s2 = a.get("attn_end_io", 0.0), a.get("attn_end_s2", 0.0)
    if io >= threshold and io >= s2:
        return "name_mover"
    if s2 >= threshold:
        return "s_suppressor"
    return "direct_effect"


@dataclass
class Stage:
    role: str
    receivers: Receivers
    effects: torch.Tensor  # [n_senders] mean effect / model score, over all heads


def _effects(
    model, batch: TaskBatch, receivers: Receivers, clean: torch.Tensor, scale: float, caches
) -> torch.Tensor:
    scores = path_patch(model, batch, receivers, caches=caches)
    return (scores - clean[None]).mean(1) / scale


def _select(
    effects: torch.Tensor,
    labels: list[Head],
    share: float,
    cap: int,
    exclude: set[Head],
    sign: int | None = None,
) -> list[Head]:
    order = torch.argsort(effects.abs(), descending=True).tolist()
    chosen = []
    for i in order:
        e = float(effects[i])
        if abs(e) < share or labels[i] in exclude:
            continue
        if sign is not None and (e > 0) != (sign > 0):
            continue
        chosen.append(labels[i])
        if len(chosen) == cap:
            break
    return chosen


@dataclass
class Discovery:
    circuit: Circuit
    effects: pd.DataFrame  # layer, head, measure (path_<stage>), value: share of the model score


DEFAULT_DISCOVERY = DiscoveryConfig()


@torch.no_grad()
def discover_circuit(
    model,
    batch: TaskBatch,
    model_name: str = "model",
    config: DiscoveryConfig = DEFAULT_DISCOVERY,
    attention: dict[Head, dict[str, float]] | None = None,
) -> Discovery:
    """The IOI circuit of `model` on `batch` (clean vs the ABC counterfactual)."""
    labels = head_labels(model)
    clean = task_score(end_logits(model(batch.tokens), batch), batch)
    scale = max(abs(float(clean.mean())), 1e-6)
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
                    "value": effects.tolist(),
                }
            )
        )

    def add(
        found: list[Head],
        role: str,
        position: str,
        effects: torch.Tensor,
        receivers: list[Head] | None,
        kind: str,
    ) -> None:
        for h in found:
            heads.append(CircuitHead(h[0], h[1], role, position, float(effects[labels.index(h)])))
            taken.add(h)
            for r in receivers or ["logits"]:
                if r == "logits" or r[0] > h[0]:  # a head only reaches later layers
                    edges.append(Edge(h, r, kind))

    caches = (z_cache(model, batch.tokens), z_cache(model, batch.corrupted))
    direct = _effects(model, batch, Receivers(), clean, scale, caches)
    record("logits", direct)
    movers = _select(direct, labels, config.share, config.max_per_stage, taken, sign=-1)
    for h in movers:
        add([h], _direct_role(attention, h, config.attention), "end", direct, None, "logits")
    negative = _select(direct, labels, config.share, config.max_per_stage, taken, sign=+1)
    add(negative, "negative_name_mover", "end", direct, None, "logits")
    stages = [
        ("s_inhibition", "q", "end", movers),
        ("induction", "v", "s2", None),
        ("previous_token", "k", "s1+1", None),
    ]
    receivers = movers
    for role, kind, position, _ in stages:
        if not receivers:
            break
        recv_pos = "end" if kind == "q" else position
        effects = _effects(model, batch, Receivers(tuple(receivers), kind, recv_pos), clean, scale, caches)
        record(f"{kind}_of_{role}_receivers", effects)
        found = _select(effects, labels, config.share, config.max_per_stage, taken)
        if role == "induction" and attention:
            for h in found:
                a = attention.get(h, {})
                actual = "duplicate_token" if a.get("attn_s2_s1", 0) > a.get("induction", 0) else "induction"
                add([h], actual, position, effects, receivers, kind)
        else:
            add(found, role, position, effects, receivers, kind)
        receivers = found
    circuit = Circuit(
        task=batch.task,
        model=model_name,
        heads=heads,
        edges=edges,
        n_model_heads=len(labels),
        meta={"share": config.share, "model_score": float(clean.mean()), "n_prompts": len(batch)},
    )
    return Discovery(circuit, pd.concat(tables, ignore_index=True))
