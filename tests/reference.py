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


def _sender_output(model, cache, sender: str) -> torch.Tensor:
    """A graph node's output in the residual stream, from a full cache (by definition)."""
    if sender == "input":
        return cache["blocks.0.hook_in"]
    if sender.startswith("m"):
        return cache[f"blocks.{int(sender[1:])}.hook_mlp_out"]
    layer, head = (int(p[1:]) for p in sender.split("."))
    out = cache[f"blocks.{layer}.attn.hook_z"][:, :, head] @ model.W_O[layer, head]
    post = f"blocks.{layer}.ln1_post"  # Gemma-2 normalises the summed heads before the residual:
    if post + ".hook_scale" in cache:  # head h adds (1 + w) * o_h / rms(sum of heads)
        norm = model.blocks[layer].ln1_post.original_component
        out = (1 + norm.weight) * out / cache[post + ".hook_scale"]
    return out


def shifted_edge_score(model, batch: TaskBatch, sender: str, receiver: str, eps) -> torch.Tensor:
    """Mean score of the clean run in which only `receiver`'s input (a head's q/k/v input, an
    MLP's input or the final residual) is moved by eps * (sender's corrupted - clean output).
    eps = 1 patches the one edge; d/d eps at 0 is its EAP score. Every other head's q/k/v in the
    receiver's layer is held at its clean value, so only that one head's input moves."""
    with torch.no_grad():
        _, clean = model.run_with_cache(batch.tokens)
        _, corrupt = model.run_with_cache(batch.corrupted)
        delta = _sender_output(model, corrupt, sender) - _sender_output(model, clean, sender)
    hooks = []
    if receiver == "logits":
        hooks.append(("ln_final.hook_in", lambda act, hook: act + eps * delta))
    elif receiver.startswith("m"):
        hooks.append((f"blocks.{int(receiver[1:])}.ln2.hook_in", lambda act, hook: act + eps * delta))
    else:
        node, kind = receiver[:-1].split("<")
        layer, head = (int(p[1:]) for p in node.split("."))
        hooks.append((f"blocks.{layer}.ln1.hook_in", lambda act, hook: act + eps * delta))
        for x in "qkv":
            name = f"blocks.{layer}.attn.hook_{x}"

            def restore(act, hook, name=name, x=x):
                out = clean[name].clone()
                if x == kind:
                    out[:, :, head] = act[:, :, head]
                return out

            hooks.append((name, restore))
    logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
    return task_score(end_logits(logits, batch), batch).mean()


def edge_derivative(model, batch: TaskBatch, sender: str, receiver: str) -> float:
    """d(mean score)/d eps at eps = 0 by autograd: EAP's definition, edge by edge."""
    eps = torch.zeros((), requires_grad=True)
    with torch.enable_grad():
        score = shifted_edge_score(model, batch, sender, receiver, eps)
        (grad,) = torch.autograd.grad(score, eps)
    return float(grad)


def slow_prob_diff(end: torch.Tensor, year_ids: torch.Tensor, start_years: torch.Tensor) -> list[float]:
    """Greater-Than's probability difference from its definition, one prompt and one year at a
    time: softmax over the whole vocabulary, then sum P(year > YY) - sum P(year <= YY)."""
    import math

    out = []
    for row, yy in zip(end.tolist(), start_years.tolist(), strict=True):
        top = max(row)
        total = sum(math.exp(v - top) for v in row)
        value = 0.0
        for year in range(100):
            p = math.exp(row[int(year_ids[year])] - top) / total
            value += p if year > yy else -p
        out.append(value)
    return out


@torch.no_grad()
def slow_mean_ablation(model, batch: TaskBatch, components) -> torch.Tensor:
    """Per-prompt score with each component mean-ablated: a head's z or an MLP's output (layer,
    -1) replaced, at every position, by its mean over the counterfactual prompts of the same
    group, the means taken prompt by prompt in a plain loop."""
    _, cache = model.run_with_cache(batch.corrupted)
    names = {
        c: f"blocks.{c[0]}.hook_mlp_out" if c[1] < 0 else f"blocks.{c[0]}.attn.hook_z" for c in components
    }
    means = {}
    for c, name in names.items():
        act = cache[name]
        rows = []
        for i in range(len(batch)):
            same = [j for j in range(len(batch)) if int(batch.group[j]) == int(batch.group[i])]
            total = act[same[0]].clone()
            for j in same[1:]:
                total += act[j]
            rows.append(total / len(same))
        means[c] = torch.stack(rows)

    def hook_for(c):
        def hook(act, hook):
            act = act.clone()
            if c[1] < 0:
                act[:] = means[c]
            else:
                act[:, :, c[1]] = means[c][:, :, c[1]]
            return act

        return hook

    logits = model.run_with_hooks(batch.tokens, fwd_hooks=[(names[c], hook_for(c)) for c in components])
    return task_score(end_logits(logits, batch), batch)
