"""Train only chosen heads (targeted repair): gradient masks over the attention weights.

A head's parameters are its rows of the q/k/v projections (and their biases) and its columns of
the output projection; everything else gets a zero gradient. With AdamW and no weight decay a
zero gradient leaves a parameter bitwise unchanged, so only the chosen heads move.
Supported layout: the TransformerLens-native models this tool builds (toy-ioi and its
fine-tunes); other architectures get a clear error.
"""

from __future__ import annotations

import re

import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.models.load import LoadedModel
from circuit_plasticity.models.native import to_stable


def parse_heads(components: list[str]) -> list[tuple[int, int]]:
    heads = []
    for c in components:
        m = re.fullmatch(r"(\d+)\.(\d+)", c.strip())
        if not m:
            raise UserError(f"train_only: {c!r} is not a head; write heads as LAYER.HEAD, e.g. 1.0")
        heads.append((int(m.group(1)), int(m.group(2))))
    return heads


def head_gradient_masks(loaded: LoadedModel, components: list[str]) -> dict[torch.nn.Parameter, torch.Tensor]:
    """Parameter -> 0/1 mask of the same shape that keeps only the listed heads' weights."""
    if loaded.kind != "native":
        raise UserError(
            "train_only (targeted repair) supports models built by this tool (toy-ioi and "
            "its fine-tunes); this model is a Hugging Face architecture"
        )
    heads = parse_heads(components)
    cfg = loaded.model.cfg
    bad = [h for h in heads if not (0 <= h[0] < cfg.n_layers and 0 <= h[1] < cfg.n_heads)]
    if bad:
        raise UserError(f"train_only: heads {bad} do not exist in a {cfg.n_layers}x{cfg.n_heads} model")
    d = cfg.d_head
    masks = {}
    for name, param in loaded.model.original_model.named_parameters():
        mask = torch.zeros_like(param)
        m = re.fullmatch(r"blocks\.(\d+)\.attn\.([qkvo])\.(weight|bias)", to_stable(name))
        if m:
            layer, proj, kind = int(m.group(1)), m.group(2), m.group(3)
            for lay, head in heads:
                if lay != layer:
                    continue
                part = slice(head * d, (head + 1) * d)
                if proj == "o" and kind == "weight":
                    mask[:, part] = 1  # output projection: the head's input columns
                elif proj != "o":
                    mask[part] = 1  # q/k/v: the head's output rows (and bias entries)
        masks[param] = mask
    return masks


def apply_masks(masks: dict[torch.nn.Parameter, torch.Tensor]) -> list:
    """Register gradient hooks; returns the handles (remove them to train everything again)."""
    return [param.register_hook(lambda grad, mask=mask: grad * mask) for param, mask in masks.items()]
