"""Weight-space change per component: ||W - W_base|| / ||W_base|| for every head and MLP.

A head's weights are its slices of W_Q, W_K, W_V (d_model x d_head each) and W_O
(d_head x d_model), with their biases; an MLP's are W_in (and W_gate where gated), W_out and
biases. Bias-free architectures (Llama, Gemma) simply have fewer tensors. Under grouped-query
attention a head's W_K/W_V are those of the K/V head it shares with its group (`kv_groups`), so
a change there shows in every head of the group. Comparing this
with the activation view (CMAP) shows whether corruption is localized in weights as well.
"""

from __future__ import annotations

import pandas as pd
import torch

from circuit_plasticity.analysis.hooks import kv_head, stacked_param
from circuit_plasticity.components import component_name


def _head_params(model, layer: int, head: int) -> list[torch.Tensor]:
    kv = kv_head(model, head)
    out = [model.W_Q[layer, head], model.W_K[layer, kv], model.W_V[layer, kv], model.W_O[layer, head]]
    for name, index in (("b_Q", head), ("b_K", kv), ("b_V", kv)):
        bias = stacked_param(model, name)
        if bias is not None:
            out.append(bias[layer, index])
    return out


def _mlp_params(model, layer: int) -> list[torch.Tensor]:
    names = ("W_in", "W_gate", "W_out", "b_in", "b_out")
    return [p[layer] for p in (stacked_param(model, n) for n in names) if p is not None]


def _relative(new: list[torch.Tensor], base: list[torch.Tensor]) -> tuple[float, float]:
    diff = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(new, base, strict=True)))
    norm = torch.sqrt(sum((b**2).sum() for b in base))
    return float(diff), float(diff / norm) if norm > 0 else float("nan")


@torch.no_grad()
def weight_change(model, base) -> pd.DataFrame:
    """Rows: component (its name: 'a1.h0' or 'm2'), layer, head (-1 for MLPs), abs and relative change."""
    rows = []
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            absolute, relative = _relative(_head_params(model, layer, head), _head_params(base, layer, head))
            rows.append(
                {
                    "component": component_name((layer, head)),
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
                    "component": component_name((layer, -1)),
                    "layer": layer,
                    "head": -1,
                    "weight_change": absolute,
                    "weight_change_rel": relative,
                }
            )
    return pd.DataFrame(rows)
