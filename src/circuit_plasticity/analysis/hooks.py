"""Thin helpers over TransformerLens hook names, so analyses never spell them twice."""

from __future__ import annotations

import torch


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


def head_labels(model) -> list[tuple[int, int]]:
    n_layers, n_heads = n_layers_heads(model)
    return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
