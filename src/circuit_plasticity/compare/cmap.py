"""Cross-model activation patching (CMAP, Prakash et al. 2024) and cross-model attention-pattern
patching (the study's localization evidence), through the one patching engine.

Two models differ in every weight, the output projection W_O included. Patching a head's z
(its attention-weighted values) from model A into model B still multiplies it by B's W_O and
so misses what fine-tuning did to W_O; `patch_outputs` patches the head's whole output
z_A W_O^A: z is replaced through the engine's hooks and z_A (W_O^A - W_O^B) is added to the
attention module's output (before Gemma-2's post-attention norm). The shared output bias b_O
belongs to no head and is not patched. An MLP member (layer, -1) takes the source's whole MLP
output (its weights included) in place of the target's.

For every head (and head x position): run model B on the prompts with that head's output (or
attention pattern) taken from model A on the same prompts. The change of B's score says how
much of A's difference from B lives in that component; its share of the A - B gap says how much
of the whole difference it explains.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from circuit_plasticity.analysis.hooks import head_labels, mlp_name, z_name
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.patching import activation_cache, output_cache, patch_each_head, repeat_batch
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]


@torch.no_grad()
def patch_outputs(
    target,
    source,
    batch: TaskBatch,
    head_sets: Sequence[Sequence[Head]],
    source_z: dict[int | str, torch.Tensor] | None = None,
    sets_per_pass: int = 16,
) -> torch.Tensor:
    """[len(head_sets), n] scores of `target` with each set's head outputs taken from `source`
    (the same prompts), the heads' output projections included; (layer, -1) members are MLPs.
    `source_z`: the source's `patching.output_cache` (z alone will do without MLP members)."""
    z_src = source_z if source_z is not None else output_cache(source, batch.tokens)
    delta_w = (source.W_O - target.W_O).detach()  # [layers, heads, d_head, d_model]
    n = batch.tokens.shape[0]
    out = []
    for start in range(0, len(head_sets), sets_per_pass):
        chunk = [list(s) for s in head_sets[start : start + sets_per_pass]]
        k = len(chunk)
        layers = sorted({lay for members in chunk for lay, h in members if h >= 0})
        mlps = sorted({lay for members in chunk for lay, h in members if h < 0})

        def mlp_hook(layer: int, chunk=chunk, k=k):
            def hook(out: torch.Tensor, hook=None) -> torch.Tensor:
                out = out.clone().view(k, n, *out.shape[1:])
                for copy, members in enumerate(chunk):
                    if (layer, -1) in members:
                        out[copy] = z_src[mlp_name(layer)]
                return out.view(k * n, *out.shape[2:])

            return hook

        def z_hook(layer: int, chunk=chunk, k=k):
            def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
                z = z.clone().view(k, n, *z.shape[1:])
                for copy, members in enumerate(chunk):
                    heads = [h for lay, h in members if lay == layer and h >= 0]
                    if heads:
                        z[copy][:, :, heads] = z_src[layer][:, :, heads]
                return z.view(k * n, *z.shape[2:])

            return hook

        def out_hook(layer: int, chunk=chunk, k=k):
            def hook(attn_out: torch.Tensor, hook=None) -> torch.Tensor:
                attn_out = attn_out.clone().view(k, n, *attn_out.shape[1:])
                for copy, members in enumerate(chunk):
                    heads = [h for lay, h in members if lay == layer and h >= 0]
                    if heads:
                        attn_out[copy] += torch.einsum(
                            "nphd,hdm->npm", z_src[layer][:, :, heads], delta_w[layer, heads]
                        )
                return attn_out.view(k * n, *attn_out.shape[2:])

            return hook

        hooks = [(z_name(lay), z_hook(lay)) for lay in layers]
        hooks += [(f"blocks.{lay}.attn.hook_out", out_hook(lay)) for lay in layers]
        hooks += [(mlp_name(lay), mlp_hook(lay)) for lay in mlps]
        rep = repeat_batch(batch, k)
        logits = target.run_with_hooks(batch.tokens.repeat(k, 1), fwd_hooks=hooks)
        scored = task_score(end_logits(logits, rep), rep)
        out.append(scored.view(k, n, *scored.shape[1:]))
    return torch.cat(out) if out else torch.empty(0, n)


@torch.no_grad()
def cross_model_patch(
    model_a, model_b, batch: TaskBatch, activation: str = "z", positions: Sequence[str] = ("all",)
) -> pd.DataFrame:
    """Rows: layer, head, position, activation, delta (B's score change), share (of A - B gap).

    `activation`: "output" (the head's whole output, W_O included; positions "all" only), "z"
    or "pattern" (then A's values or attention pattern pass through B's own weights)."""
    if activation == "output" and tuple(positions) != ("all",):
        raise ValueError('output patching covers every position: positions=("all",)')
    if model_a.cfg.n_layers != model_b.cfg.n_layers or model_a.cfg.n_heads != model_b.cfg.n_heads:
        raise ValueError("cross-model patching needs two models of the same architecture")
    score_a = float(task_score(end_logits(model_a(batch.tokens), batch), batch).mean())
    score_b_prompts = task_score(end_logits(model_b(batch.tokens), batch), batch)
    score_b = float(score_b_prompts.mean())
    gap = score_a - score_b
    source = activation_cache(model_a, batch.tokens, "z" if activation == "output" else activation)
    labels = head_labels(model_b)
    rows = []
    for role in positions:
        pos = None if role == "all" else batch.positions[role]
        if activation == "output":
            scores = patch_outputs(model_b, model_a, batch, [[h] for h in labels], source)
        else:
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
