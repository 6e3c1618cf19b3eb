"""Train only chosen heads (targeted repair): gradient masks over the attention weights.

A head's parameters are its slices of W_Q, W_K, W_V, W_O and of the q/k/v biases; an MLP's
(written mL, e.g. m1) are its whole W_in, W_out and their biases; everything else gets a zero
gradient. With AdamW and no weight decay a zero gradient leaves a parameter
bitwise unchanged, so only the chosen heads move.

Which entries of the model's own parameters hold a head's slice differs by architecture (GPT-2's
fused Conv1D, GPT-NeoX's interleaved query_key_value, Llama's separate projections), so the
masks are found by autograd, not by names: the gradient of a random weighting of the head's
TransformerLens weights (W_Q[l, h], ...) is non-zero exactly on the entries they are made of.
Under grouped-query attention a K/V head is shared by a group of query heads (`kv_groups`);
it is trained only when every head of its group is chosen, so unchosen heads never move.
"""

from __future__ import annotations

import torch

from circuit_plasticity.analysis.hooks import kv_groups, stacked_param
from circuit_plasticity.components import Component, component_name
from circuit_plasticity.errors import UserError
from circuit_plasticity.models.load import LoadedModel


def parse_heads(components: list[str]) -> list[tuple[int, int]]:
    """Component names ('a1.h0', 'm1'; 'L.H' also read) -> (layer, head) keys."""
    try:
        return [Component.parse(c) for c in components]
    except ValueError as why:
        raise UserError(f"train_only: {why}") from None


def check_components(loaded: LoadedModel, components: list[str], where: str = "train_only") -> None:
    """A UserError when a listed head or MLP is not in the model: checked when a spec is loaded,
    before any phase trains, not when the phase that names it starts."""
    cfg = loaded.model.cfg
    heads = parse_heads(components)
    bad = [h for h in heads if not (0 <= h[0] < cfg.n_layers and -1 <= h[1] < cfg.n_heads)]
    bad += [h for h in heads if h[1] < 0 and cfg.attn_only and h not in bad]
    if bad:
        names = ", ".join(component_name(h) for h in bad)
        mlps = "" if cfg.attn_only else f" and MLPs m0..m{cfg.n_layers - 1}"
        raise UserError(
            f"{where}: {names} do not exist in this {cfg.n_layers}-layer, {cfg.n_heads}-head model "
            f"(heads a0.h0..a{cfg.n_layers - 1}.h{cfg.n_heads - 1}{mlps}); fix the names"
        )


def component_count(loaded: LoadedModel) -> int:
    """Heads and MLPs of the model: the components a localized set is drawn from."""
    cfg = loaded.model.cfg
    return cfg.n_layers * cfg.n_heads + (0 if cfg.attn_only else cfg.n_layers)


def head_gradient_masks(loaded: LoadedModel, components: list[str]) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Parameter -> 0/1 mask of the same shape that keeps only the listed heads' weights."""
    check_components(loaded, components)
    heads = parse_heads(components)
    model = loaded.model
    params = dict(model.original_model.named_parameters())
    saved = {name: p.grad for name, p in params.items()}
    for p in params.values():
        p.grad = None
    generator = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        total = sum(
            (w * torch.randn(w.shape, generator=generator).to(w)).sum() for w in _head_slices(model, heads)
        )
        total.backward()
    masks = {
        p: (p.grad != 0).to(p.dtype) if p.grad is not None else torch.zeros_like(p) for p in params.values()
    }
    for name, p in params.items():
        p.grad = saved[name]
    return masks


def frozen_kv_heads(model, components: list[str]) -> list[str]:
    """Chosen heads whose K/V stays frozen because it is shared with an unchosen head (GQA)."""
    chosen = {h for h in parse_heads(components) if h[1] >= 0}
    groups = kv_groups(model)
    return [
        component_name((lay, h))
        for lay, h in sorted(chosen)
        if not all((lay, g) in chosen for g in next(grp for grp in groups if h in grp))
    ]


def _head_slices(model, heads: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The chosen heads' TransformerLens weight slices (K/V only for whole chosen groups) and the
    chosen MLPs' weights."""
    out = []
    for layer in sorted({lay for lay, h in heads if h < 0}):
        out += [model.W_in[layer], model.W_out[layer]]
        extra = (stacked_param(model, name) for name in ("W_gate", "b_in", "b_out"))  # gated MLPs
        out += [p[layer] for p in extra if p is not None]
    heads = [h for h in heads if h[1] >= 0]
    chosen = set(heads)
    for layer, head in heads:
        out += [model.W_Q[layer, head], model.W_O[layer, head]]
        b_q = stacked_param(model, "b_Q")
        out += [] if b_q is None else [b_q[layer, head]]
    for layer in sorted({lay for lay, _ in heads}):
        for kv, group in enumerate(kv_groups(model)):
            if all((layer, h) in chosen for h in group):
                out += [model.W_K[layer, kv], model.W_V[layer, kv]]
                out += [
                    b[layer, kv]
                    for b in (stacked_param(model, "b_K"), stacked_param(model, "b_V"))
                    if b is not None
                ]
    return out


def apply_masks(masks: dict[torch.nn.Parameter, torch.Tensor]) -> list:
    """Register gradient hooks; returns the handles (remove them to train everything again)."""
    return [param.register_hook(lambda grad, mask=mask: grad * mask) for param, mask in masks.items()]
