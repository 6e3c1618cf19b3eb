"""Weight-space change per component: ||W - W_base|| / ||W_base|| for every head and MLP.

A head's weights are its slices of W_Q, W_K, W_V (d_model x d_head each) and W_O
(d_head x d_model), with their biases; an MLP's are W_in, W_out and biases. Comparing this
with the activation view (CMAP) shows whether corruption is localized in weights as well.
"""

from __future__ import annotations

import pandas as pd
import torch


def _head_params(model, layer: int, head: int) -> list[torch.Tensor]:
    return [
        model.W_Q[layer, head],
        model.W_K[layer, head],
        model.W_V[layer, head],
        model.W_O[layer, head],
        model.b_Q[layer, head],
        model.b_K[layer, head],
        model.b_V[layer, head],
    ]


def _mlp_params(model, layer: int) -> list[torch.Tensor]:
    return [model.W_in[layer], model.W_out[layer], model.b_in[layer], model.b_out[layer]]


def _relative(new: list[torch.Tensor], base: list[torch.Tensor]) -> tuple[float, float]:
    diff = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(new, base, strict=True)))
    norm = torch.sqrt(sum((b**2).sum() for b in base))
    return float(diff), float(diff / norm) if norm > 0 else float("nan")


@torch.no_grad()
def weight_change(model, base) -> pd.DataFrame:
    """Rows: component (e.g. '1.0' or 'mlp2'), layer, head (-1 for MLPs), abs and relative change."""
    rows = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            absolute, relative = _relative(_head_params(model, layer, head), _head_params(base, layer, head))
            rows.append(
                {
                    "component": f"{layer}.{head}",
                    "layer": layer,
                    "head": head,
                    "weight_change": absolute,
                    "weight_change_rel": relative,
                }
            )
        if not model.cfg.attn_only:
            absolute, relative = _relative(_mlp_params(model, layer), _mlp_params(base, layer))
            rows.append(
                {
                    "component": f"mlp{layer}",
                    "layer": layer,
                    "head": -1,
                    "weight_change": absolute,
                    "weight_change_rel": relative,
                }
            )
    return pd.DataFrame(rows)
