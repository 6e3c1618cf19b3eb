"""Knockout by mean ablation (Wang et al.): a head's output is replaced by its mean over the
counterfactual (ABC) distribution, taken per template, so position-specific structure stays.

Single-head knockouts of every head run batched: the prompts are stacked once per head along
the batch dimension and one forward pass ablates a different head in each copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from circuit_plasticity.analysis.hooks import head_labels, n_layers_heads, run_cached, z_name
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]


@torch.no_grad()
def group_means(model, batch: TaskBatch) -> dict[int, torch.Tensor]:
    """Per layer, [n, seq, heads, d_head]: each prompt gets the mean z of its template's
    counterfactual prompts (the mean-ablation reference)."""
    n_layers, _ = n_layers_heads(model)
    _, cache = run_cached(model, batch.corrupted, [z_name(lay) for lay in range(n_layers)])
    groups, inverse = torch.unique(batch.group, return_inverse=True)
    counts = torch.bincount(inverse, minlength=len(groups)).to(torch.float32)
    means = {}
    for layer in range(n_layers):
        z = cache[z_name(layer)]
        sums = torch.zeros((len(groups), *z.shape[1:]), dtype=z.dtype).index_add_(0, inverse, z)
        means[layer] = (sums / counts[:, None, None, None])[inverse]
    return means


@torch.no_grad()
def knockout(model, batch: TaskBatch, heads: Sequence[Head],
             means: dict[int, torch.Tensor] | None = None) -> torch.Tensor:
    """Per-prompt score with all `heads` mean-ablated at once (a joint knockout)."""
    means = group_means(model, batch) if means is None else means
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def hook_for(layer: int):
        idx = torch.tensor(by_layer[layer])

        def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
            z = z.clone()
            z[:, :, idx] = means[layer][:, :, idx]
            return z

        return hook

    hooks = [(z_name(layer), hook_for(layer)) for layer in by_layer]
    logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
    return task_score(end_logits(logits, batch), batch)


@torch.no_grad()
def knockout_each_head(model, batch: TaskBatch, means: dict[int, torch.Tensor] | None = None,
                       heads_per_pass: int = 16) -> pd.DataFrame:
    """Mean-ablate every head alone; batched: one forward pass per `heads_per_pass` heads."""
    means = group_means(model, batch) if means is None else means
    base = task_score(end_logits(model(batch.tokens), batch), batch)
    labels = head_labels(model)
    n = len(batch)
    scores = []
    for start in range(0, len(labels), heads_per_pass):
        chunk = labels[start : start + heads_per_pass]
        k = len(chunk)

        def hook_for(layer: int, chunk=chunk, k=k):
            def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
                z = z.clone().view(k, n, *z.shape[1:])
                for copy, (lay, head) in enumerate(chunk):
                    if lay == layer:
                        z[copy, :, :, head] = means[layer][:, :, head]
                return z.view(k * n, *z.shape[2:])

            return hook

        layers = sorted({lay for lay, _ in chunk})
        stacked = batch.tokens.repeat(k, 1)
        logits = model.run_with_hooks(stacked, fwd_hooks=[(z_name(lay), hook_for(lay)) for lay in layers])
        end = logits[torch.arange(k * n), batch.end.repeat(k)]
        rep = _repeat_batch(batch, k)
        scores.append(task_score(end, rep).view(k, n))
    all_scores = torch.cat(scores)
    return pd.DataFrame([
        {"layer": lay, "head": head, "knockout_score": float(all_scores[i].mean()),
         "knockout_effect": float((all_scores[i] - base).mean())}
        for i, (lay, head) in enumerate(labels)
    ])


def _repeat_batch(batch: TaskBatch, k: int) -> TaskBatch:
    """The batch's answer ids repeated k times (only what task_score reads)."""
    return TaskBatch(
        task=batch.task, tokens=batch.tokens, corrupted=batch.corrupted, positions={},
        target_id=batch.target_id.repeat(k), answer_id=batch.answer_id.repeat(k),
        wrong_id=batch.wrong_id.repeat(k), poisoned=batch.poisoned.repeat(k), group=batch.group,
        year=None if batch.year is None else batch.year.repeat(k), year_ids=batch.year_ids,
    )
