"""LoRA fine-tuning of any model the bridge loads: low-rank adapters as weight parametrizations.

Each weight matrix that holds a head's or an MLP's weights becomes W0 + (alpha / rank) M * (B A)
(torch.nn.utils.parametrize), with W0 frozen and only A and B trained. Which matrices those are,
and M (the mask that restricts the change to chosen components under `train_only`), come from
the same autograd masks targeted repair uses (training/masking.py), so the rule is one for
every architecture (GPT-2's fused Conv1D, Llama's separate projections, the toys' Linear).
Why not peft's module swap: it replaces the modules the TransformerBridge hooks, while a
parametrization keeps them and changes only what `module.weight` returns.

A checkpoint holds the merged weights (an ordinary model directory every command reads) and, in
its train state, the factors and their AdamW moments; a resumed phase re-attaches the factors to
its parent's weights, so it continues bit for bit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from circuit_plasticity.components import component_name
from circuit_plasticity.models.load import LoadedModel
from circuit_plasticity.training.masking import head_gradient_masks
from circuit_plasticity.training.protocol import LoraSpec


class LowRankDelta(nn.Module):
    """W -> W + scale * mask * (B @ A); B starts at zero, so the parent is step 0."""

    def __init__(self, shape: torch.Size, rank: int, scale: float, mask: torch.Tensor | None, seed: int):
        super().__init__()
        rows, cols = shape
        generator = torch.Generator().manual_seed(seed)
        bound = 1 / math.sqrt(cols)  # kaiming-uniform with a = sqrt(5), as nn.Linear and LoRA
        self.A = nn.Parameter((torch.rand(rank, cols, generator=generator) * 2 - 1) * bound)
        self.B = nn.Parameter(torch.zeros(rows, rank))
        self.scale = scale
        self.register_buffer("mask", mask, persistent=False)

    def delta(self) -> torch.Tensor:
        d = self.scale * (self.B @ self.A)
        return d if self.mask is None else d * self.mask

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta()


class Adapters:
    """The adapters attached to one model: their trainable factors by name, and the sites."""

    def __init__(self, sites: list[tuple[nn.Module, str, str, LowRankDelta]]):
        self.sites = sites

    @property
    def named(self) -> dict[str, nn.Parameter]:
        """Factor name -> parameter (names carry no '::', the train state's separator)."""
        out = {}
        for _, _, name, delta in self.sites:
            out[f"{name}.lora_A"] = delta.A
            out[f"{name}.lora_B"] = delta.B
        return out

    @contextlib.contextmanager
    def merged(self) -> Iterator[None]:
        """The model with plain merged weights (to save it), adapters back afterwards."""
        bases = []
        for module, attr, _, _ in self.sites:
            bases.append(module.parametrizations[attr].original.detach().clone())
            parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
        try:
            yield
        finally:
            for (module, attr, _, delta), base in zip(self.sites, bases, strict=True):
                with torch.no_grad():
                    getattr(module, attr).copy_(base)
                parametrize.register_parametrization(module, attr, delta)


def adapter_components(loaded: LoadedModel, spec: LoraSpec, train_only: list[str] | None) -> list[str]:
    """The components whose weights get adapters: `train_only`, else every head and/or MLP."""
    if train_only:
        return list(train_only)
    cfg = loaded.model.cfg
    names = []
    if "attn" in spec.targets:
        heads = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
        names += [component_name(h) for h in heads]
    if "mlp" in spec.targets and not cfg.attn_only:
        names += [component_name((layer, -1)) for layer in range(cfg.n_layers)]
    return names


def attach(loaded: LoadedModel, spec: LoraSpec, train_only: list[str] | None, seed: int) -> Adapters:
    """Freeze every parameter and attach an adapter to each weight matrix of the chosen
    components; a matrix shared with other components gets the mask that keeps them fixed."""
    components = adapter_components(loaded, spec, train_only)
    masks = head_gradient_masks(loaded, components)
    named = dict(loaded.model.original_model.named_parameters())
    for param in named.values():
        param.requires_grad_(False)
    sites = []
    scale = spec.alpha / spec.rank
    for index, (name, param) in enumerate(sorted(named.items())):
        mask = masks.get(param)
        if param.ndim != 2 or mask is None or not bool(mask.any()):
            continue  # biases, norms, embeddings: frozen
        full = bool(mask.all())
        module_name, _, attr = name.rpartition(".")
        module = loaded.model.original_model.get_submodule(module_name)
        delta = LowRankDelta(
            param.shape, spec.rank, scale, None if full else mask.detach().clone(), seed * 100_003 + index
        ).to(param.device, param.dtype)
        parametrize.register_parametrization(module, attr, delta)
        sites.append((module, attr, name, delta))
    return Adapters(sites)
