"""Thin helpers over TransformerLens hook names, so analyses never spell them twice."""

from __future__ import annotations

import torch

from circuit_plasticity.components import Component
from circuit_plasticity.models.ungroup import n_kv_heads


def z_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def pattern_name(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def run_cached(
    model, tokens: torch.Tensor, names: list[str], fwd_hooks: list | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward pass keeping only the named activations (never the whole model's),
    optionally under intervention hooks (e.g. a joint knockout)."""
    wanted = set(names)
    with model.hooks(fwd_hooks=fwd_hooks or []):
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return logits, {n: cache[n] for n in names}


def n_layers_heads(model) -> tuple[int, int]:
    return int(model.cfg.n_layers), int(model.cfg.n_heads)


def head_labels(model) -> list[Component]:
    n_layers, n_heads = n_layers_heads(model)
    return [Component(layer, head) for layer in range(n_layers) for head in range(n_heads)]


def mlp_name(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def mlp_labels(model) -> list[Component]:
    """MLPs as components (layer, -1); none in attention-only models."""
    return [] if model.cfg.attn_only else [Component(lay, -1) for lay in range(model.cfg.n_layers)]


def component_labels(model) -> list[Component]:
    """Every circuit component: heads (layer, head), then MLPs (layer, -1)."""
    return head_labels(model) + mlp_labels(model)


def matched_sample(rng, pool: list[tuple[int, int]], like) -> list[tuple[int, int]]:
    """A random set from `pool` with as many MLPs and heads as `like`: a null for a set of
    components must not differ from it in kind (an MLP carries far more than a head). Where
    the pool holds too few MLPs, heads fill the rest. With no MLPs anywhere this is exactly
    rng.sample(pool, len(like))."""
    mlps = [c for c in pool if c[1] < 0]
    n_mlps = min(sum(1 for c in like if c[1] < 0), len(mlps))
    if not mlps or n_mlps == 0:
        heads = [c for c in pool if c[1] >= 0]
        return rng.sample(heads, min(len(like), len(heads)))
    heads = [c for c in pool if c[1] >= 0]
    return rng.sample(mlps, n_mlps) + rng.sample(heads, min(len(like) - n_mlps, len(heads)))


def kv_head(model, head: int) -> int:
    """The K/V head a query head reads (query heads are grouped in consecutive blocks, as
    `repeat_kv` in Hugging Face and TransformerLens order them)."""
    return head // (int(model.cfg.n_heads) // n_kv_heads(model))


def kv_groups(model) -> list[tuple[int, ...]]:
    """Query heads that share one K/V head, per K/V head (singletons without GQA)."""
    n_heads = int(model.cfg.n_heads)
    groups: dict[int, list[int]] = {}
    for head in range(n_heads):
        groups.setdefault(kv_head(model, head), []).append(head)
    return [tuple(g) for _, g in sorted(groups.items())]


def ungroup_kv(model, act: torch.Tensor, head_axis: int = 2) -> torch.Tensor:
    """K/V activations or weights indexed by query head: each K/V head repeated for the query
    heads that read it (a no-op without GQA)."""
    repeat = int(model.cfg.n_heads) // n_kv_heads(model)
    return act if repeat == 1 else act.repeat_interleave(repeat, dim=head_axis)


def stacked_param(model, name: str) -> torch.Tensor | None:
    """A stacked weight (b_Q, b_O, b_in, W_gate, ...) or None where the architecture has none
    (bias-free Llama-style projections, ungated MLPs)."""
    try:
        return getattr(model, name)
    except AttributeError:
        return None
