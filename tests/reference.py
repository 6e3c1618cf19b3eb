"""Slow, plainly written references of the fast analyses: one sender, two or three passes."""

from __future__ import annotations

import torch

from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.tasks.encode import TaskBatch


def all_z(model, tokens):
    _, cache = model.run_with_cache(tokens)
    return {lay: cache[f"blocks.{lay}.attn.hook_z"].clone() for lay in range(model.cfg.n_layers)}


@torch.no_grad()
def slow_path_patch(
    model, batch: TaskBatch, sender, receiver_heads=(), receiver_input="logits", position="end"
) -> torch.Tensor:
    clean, corrupt = all_z(model, batch.tokens), all_z(model, batch.corrupted)
    s_layer, s_head = sender

    def frozen(layer):
        def hook(z, hook):
            z = clean[layer].clone()
            if layer == s_layer:
                z[:, :, s_head] = corrupt[layer][:, :, s_head]
            return z

        return hook

    hooks = [(f"blocks.{lay}.attn.hook_z", frozen(lay)) for lay in range(model.cfg.n_layers)]
    if receiver_input == "logits":
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        return task_score(end_logits(logits, batch), batch)
    saved = {}
    for layer, _head in receiver_heads:
        name = f"blocks.{layer}.attn.hook_{receiver_input}"

        def save(act, hook, name=name):
            saved[name] = act.clone()

        model.run_with_hooks(batch.tokens, fwd_hooks=hooks + [(name, save)])
    pos = batch.positions[position]
    patches = []
    for layer, head in receiver_heads:
        name = f"blocks.{layer}.attn.hook_{receiver_input}"

        def put(act, hook, name=name, head=head):
            act = act.clone()
            for i in range(act.shape[0]):
                act[i, pos[i], head] = saved[name][i, pos[i], head]
            return act

        patches.append((name, put))
    logits = model.run_with_hooks(batch.tokens, fwd_hooks=patches)
    return task_score(end_logits(logits, batch), batch)


@torch.no_grad()
def slow_mlp_path_patch_to_logits(model, batch: TaskBatch, layer: int) -> torch.Tensor:
    """MLP `layer` corrupted, every head frozen clean, other MLPs recomputed; read the logits."""
    clean = all_z(model, batch.tokens)
    _, cache = model.run_with_cache(batch.corrupted)
    corrupt_mlp = cache[f"blocks.{layer}.hook_mlp_out"].clone()
    hooks = [
        (f"blocks.{lay}.attn.hook_z", lambda z, hook, lay=lay: clean[lay].clone())
        for lay in range(model.cfg.n_layers)
    ]
    hooks.append((f"blocks.{layer}.hook_mlp_out", lambda out, hook: corrupt_mlp))
    logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
    return task_score(end_logits(logits, batch), batch)
