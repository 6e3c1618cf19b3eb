"""Every parameter entry of a model, owned by exactly one component: where a change can *live*.

A head owns its slices of W_Q, W_K, W_V, W_O and of the q/k/v biases; an MLP its W_in (and
W_gate), W_out and biases. Under grouped-query attention a K/V head is shared by a group of
query heads, so it is a component of its own (`a{L}.kv{G}`) and a query head owns W_Q, W_O and
b_Q only. Whatever no head or MLP owns belongs to a component of its own kind, named by what it
is: `embed`, `pos_embed`, `unembed`, `norms` (every LayerNorm/RMSNorm, the final one
included), `attn_out_bias` (the attention output biases, which belong to no head) and `other`
for anything an architecture adds. So the components partition the parameters: taking every
component's weights from another model gives that model, bit for bit.

Which entries of the model's own (Hugging Face or native) parameters hold a head's slice
differs by architecture (GPT-2's fused Conv1D, GPT-NeoX's interleaved query_key_value, Llama's
separate projections), so ownership is found by autograd, not by names: the gradient of
sum_c id_c * sum(W_c), over the TransformerLens weight views W_c of every component c, is id_c
exactly on the entries c is made of. A second pass with all ids 1 checks that no entry is
reached twice (a view that mixed entries would make the labels meaningless).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from circuit_plasticity.analysis.hooks import kv_groups, stacked_param
from circuit_plasticity.components import Component, component_name
from circuit_plasticity.models.ungroup import n_kv_heads

# kinds of the parameters no head or MLP owns, by the name of the parameter (first match)
_REMAINDER_KINDS = (
    ("embed", re.compile(r"(^|\.)(wte|embed_tokens|embed_in|tok_embed|word_embeddings)\b")),
    ("pos_embed", re.compile(r"(^|\.)(wpe|pos|embed_positions|position_embeddings)\b")),
    ("unembed", re.compile(r"(^|\.)(lm_head|embed_out|head|unembed)\b")),
    ("norms", re.compile(r"(ln|norm)", re.IGNORECASE)),
    ("attn_out_bias", re.compile(r"(attn|attention).*bias$")),
)
CIRCUIT_KINDS = ("head", "mlp")


@dataclass(frozen=True)
class ParamComponent:
    """One owner of parameter entries. `key` is the circuit Component for heads and MLPs."""

    name: str
    kind: str  # head, mlp, kv, embed, pos_embed, unembed, norms, attn_out_bias, other
    layer: int = -1
    head: int = -2  # a head's index, -1 for an MLP, -2 for everything else

    @property
    def key(self) -> Component | None:
        return Component(self.layer, self.head) if self.kind in CIRCUIT_KINDS else None


@dataclass
class Partition:
    """`labels[param_name]`: an int tensor shaped like the parameter, the index in `components`
    of the component owning each entry."""

    components: list[ParamComponent]
    labels: dict[str, torch.Tensor]

    def index(self, name: str) -> int:
        return next(i for i, c in enumerate(self.components) if c.name == name)

    def circuit_components(self) -> list[ParamComponent]:
        return [c for c in self.components if c.kind in CIRCUIT_KINDS]

    def masks(self, names) -> dict[str, torch.Tensor]:
        """Parameter name -> bool mask of the entries owned by any of `names` (touched only)."""
        ids = torch.tensor([self.index(n) for n in names], dtype=torch.int32)
        out = {}
        for pname, label in self.labels.items():
            mask = torch.isin(label, ids.to(label.device))
            if mask.any():
                out[pname] = mask
        return out


def _circuit_views(model) -> list[tuple[ParamComponent, list[torch.Tensor]]]:
    """Each head's, K/V group's and MLP's TransformerLens weight views (autograd-connected to
    the model's own parameters)."""
    cfg = model.cfg
    grouped = n_kv_heads(model) < cfg.n_heads
    out: list[tuple[ParamComponent, list[torch.Tensor]]] = []
    w_q, w_k, w_v, w_o = model.W_Q, model.W_K, model.W_V, model.W_O
    b_q, b_k, b_v = (stacked_param(model, n) for n in ("b_Q", "b_K", "b_V"))
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            views = [w_q[layer, head], w_o[layer, head]] + ([] if b_q is None else [b_q[layer, head]])
            if not grouped:
                views += [w_k[layer, head], w_v[layer, head]]
                views += [b[layer, head] for b in (b_k, b_v) if b is not None]
            comp = ParamComponent(component_name((layer, head)), "head", layer, head)
            out.append((comp, views))
        if grouped:
            for kv in range(len(kv_groups(model))):
                views = [w_k[layer, kv], w_v[layer, kv]] + [b[layer, kv] for b in (b_k, b_v) if b is not None]
                out.append((ParamComponent(f"a{layer}.kv{kv}", "kv", layer, -2), views))
        if not cfg.attn_only:
            names = ("W_in", "W_gate", "W_out", "b_in", "b_out")
            views = [p[layer] for p in (stacked_param(model, n) for n in names) if p is not None]
            out.append((ParamComponent(component_name((layer, -1)), "mlp", layer, -1), views))
    return out


def _gradients(params: dict[str, torch.nn.Parameter], weighted: list[tuple[float, list[torch.Tensor]]]):
    saved = {name: p.grad for name, p in params.items()}
    for p in params.values():
        p.grad = None
    with torch.enable_grad():
        total = sum(w * sum(v.sum() for v in views) for w, views in weighted)
        total.backward()
    grads = {name: (p.grad.detach().clone() if p.grad is not None else None) for name, p in params.items()}
    for name, p in params.items():
        p.grad = saved[name]
    return grads


def remainder_kind(param_name: str) -> str:
    """The kind of a parameter no head or MLP owns, from its name."""
    clean = param_name.replace("._original_component", "")
    for kind, pattern in _REMAINDER_KINDS:
        if pattern.search(clean):
            return kind
    return "other"


def _storage_key(p: torch.Tensor) -> int:
    return p.untyped_storage().data_ptr()


def _view(flat: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """`flat` (one entry per element of p's storage) seen with p's shape, strides and offset."""
    return flat.as_strided(p.shape, p.stride(), p.storage_offset())


@torch.no_grad()
def parameter_partition(model) -> Partition:
    """Who owns every entry of `model`'s parameters (see the module docstring).

    Parameters that alias one storage (TransformerBridge exposes GPT-2's fused c_attn and its
    q/k/v splits as separate parameters over the same memory) are labelled once, per storage
    element, and the partition keeps the parameter that spans the whole storage."""
    params = dict(model.original_model.named_parameters())
    with torch.enable_grad():
        views = _circuit_views(model)
    components = [c for c, _ in views]
    ids = _gradients(params, [(float(i + 1), v) for i, (_, v) in enumerate(views)])
    ones = _gradients(params, [(1.0, v) for _, v in views])
    groups: dict[int, list[str]] = {}
    for name, p in params.items():
        groups.setdefault(_storage_key(p), []).append(name)
    labels: dict[str, torch.Tensor] = {}
    remainder: dict[str, int] = {}
    for names in groups.values():
        first = params[names[0]]
        size = first.untyped_storage().nbytes() // first.element_size()
        flat = torch.full((size,), -1, dtype=torch.int32, device=first.device)
        count = torch.zeros(size, dtype=torch.float32, device=first.device)
        for name in names:
            if ones[name] is not None:
                _view(count, params[name]).add_(ones[name].float())
        if bool((count > 1).any()):
            raise ValueError(f"{names[0]}: an entry belongs to two components' weight views")
        for name in names:
            grad, reached = ids[name], ones[name]
            if grad is not None:
                owned = reached == 1
                _view(flat, params[name])[owned] = grad[owned].round().to(torch.int32) - 1
        keep = max(names, key=lambda n: params[n].numel())
        touched = torch.zeros(size, dtype=torch.bool, device=first.device)
        for name in names:
            _view(touched, params[name]).fill_(True)
        spanned = torch.zeros_like(touched)
        _view(spanned, params[keep]).fill_(True)
        if bool((touched & ~spanned).any()):
            raise ValueError(f"{keep}: aliased parameters that no single parameter spans")
        label = _view(flat, params[keep]).clone()
        if bool((label < 0).any()):
            kind = remainder_kind(keep)
            if kind not in remainder:
                remainder[kind] = len(components)
                components.append(ParamComponent(kind, kind))
            label[label < 0] = remainder[kind]
        labels[keep] = label
    return Partition(components, labels)
