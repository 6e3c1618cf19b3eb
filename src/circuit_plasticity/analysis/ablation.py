"""Knockout by mean ablation (Wang et al.): a head's output is replaced by its mean over the
counterfactual distribution (IOI: ABC prompts; Greater-Than: "01" prompts), taken per
`batch.group` (IOI: template; Greater-Than: century), so position-specific structure stays.
An MLP, as a component (layer, -1), is mean-ablated the same way: its output is replaced by
its group mean over the counterfactual prompts.

Single-head knockouts of every head run batched through the patching engine
(`patching.patch_each_head`), the mean being the replacement.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from circuit_plasticity.analysis.hooks import (
    head_labels,
    mlp_labels,
    mlp_name,
    n_layers_heads,
    run_cached,
    z_name,
)
from circuit_plasticity.analysis.metrics import clean_end_logits, task_score
from circuit_plasticity.analysis.patching import patch_each_head, patch_each_set
from circuit_plasticity.analysis.runs import reuse
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]


@torch.no_grad()
def group_means(model, batch: TaskBatch) -> dict[int | str, torch.Tensor]:
    """Per layer, [n, seq, heads, d_head]: each prompt gets the mean z of its group's
    counterfactual prompts (the mean-ablation reference); with MLPs also, under the key
    `mlp_name(layer)`, the group mean of each MLP's output [n, seq, d_model]."""
    return reuse("group_means", model, (batch,), lambda: _group_means(model, batch))


def _group_means(model, batch: TaskBatch) -> dict[int | str, torch.Tensor]:
    n_layers, _ = n_layers_heads(model)
    mlps = [mlp_name(lay) for lay, _ in mlp_labels(model)]
    zs = [z_name(lay) for lay in range(n_layers)]
    _, run = run_cached(model, batch.corrupted, zs + mlps)  # one pass: heads' z and MLP outputs
    cache: dict[int | str, torch.Tensor] = {lay: run[z_name(lay)] for lay in range(n_layers)}
    cache |= {name: run[name] for name in mlps}
    groups, inverse = torch.unique(batch.group, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(groups)).to(torch.float32)
    means = {}
    for key in [*range(n_layers), *mlps]:
        act = cache[key]
        sums = torch.zeros((len(groups), *act.shape[1:]), dtype=act.dtype, device=act.device)
        sums.index_add_(0, inverse, act)
        means[key] = (sums / counts.view(-1, *[1] * (act.dim() - 1)))[inverse]
    return means


def knockout_hooks(heads: Sequence[Head], means: dict[int, torch.Tensor]) -> list:
    """Forward hooks that mean-ablate all `heads` at once."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def hook_for(layer: int):
        idx = torch.tensor(by_layer[layer], device=means[layer].device)

        def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
            z = z.clone()
            z[:, :, idx] = means[layer][:, :, idx]
            return z

        return hook

    return [(z_name(layer), hook_for(layer)) for layer in by_layer]


@torch.no_grad()
def knockout(
    model, batch: TaskBatch, heads: Sequence[Head], means: dict[int, torch.Tensor] | None = None
) -> torch.Tensor:
    """Per-prompt score with all `heads` mean-ablated at once (a joint knockout)."""
    means = group_means(model, batch) if means is None else means
    return patch_each_set(model, batch, batch.tokens, means, [list(heads)])[0]


@torch.no_grad()
def knockout_each_head(
    model, batch: TaskBatch, means: dict[int, torch.Tensor] | None = None, heads_per_pass: int = 16
) -> pd.DataFrame:
    """Mean-ablate every head alone; batched: one forward pass per `heads_per_pass` heads."""
    means = group_means(model, batch) if means is None else means
    base = task_score(clean_end_logits(model, batch), batch)
    labels = head_labels(model)
    scores = patch_each_head(model, batch, batch.tokens, means, labels, heads_per_pass=heads_per_pass)
    return pd.DataFrame(
        [
            {
                "layer": lay,
                "head": head,
                "knockout_score": float(scores[i].mean()),
                "knockout_effect": float((scores[i] - base).mean()),
            }
            for i, (lay, head) in enumerate(labels)
        ]
    )
