"""Cross-model activation patching (CMAP, Prakash et al. 2024) and cross-model attention-pattern
patching (the study's localization evidence), through the one patching engine.

For every head (and head x position): run model B on the prompts with that head's output (or
attention pattern) taken from model A on the same prompts. The change of B's score says how
much of A's difference from B lives in that component; its share of the A - B gap says how much
of the whole difference it explains.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from circuit_plasticity.analysis.hooks import head_labels
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.patching import activation_cache, patch_each_head
from circuit_plasticity.tasks.encode import TaskBatch


@torch.no_grad()
def cross_model_patch(
    model_a, model_b, batch: TaskBatch, activation: str = "z", positions: Sequence[str] = ("all",)
) -> pd.DataFrame:
    """Rows: layer, head, position, activation, delta (B's score change), share (of A - B gap)."""
    if model_a.cfg.n_layers != model_b.cfg.n_layers or model_a.cfg.n_heads != model_b.cfg.n_heads:
        raise ValueError("cross-model patching needs two models of the same architecture")
    score_a = float(task_score(end_logits(model_a(batch.tokens), batch), batch).mean())
    score_b_prompts = task_score(end_logits(model_b(batch.tokens), batch), batch)
    score_b = float(score_b_prompts.mean())
    gap = score_a - score_b
    source = activation_cache(model_a, batch.tokens, activation)
    labels = head_labels(model_b)
    rows = []
    for role in positions:
        pos = None if role == "all" else batch.positions[role]
        scores = patch_each_head(model_b, batch, batch.tokens, source, labels, pos, activation=activation)
        delta = (scores - score_b_prompts[None]).mean(1)
        for i, (lay, head) in enumerate(labels):
            rows.append(
                {
                    "layer": lay,
                    "head": head,
                    "position": role,
                    "activation": activation,
                    "delta": float(delta[i]),
                    "share": float(delta[i] / gap) if abs(gap) > 1e-9 else float("nan"),
                    "score_a": score_a,
                    "score_b": score_b,
                }
            )
    return pd.DataFrame(rows)
