"""A planted edge change known by construction (docs/analysis.md, "Nodes or edges").

From the toy: heads A = a0.h0 and B = a0.h1 get the same q/k/v weights and write the same
output into two disjoint blocks of the residual stream (A into coordinates 64-79, B into
80-95; nothing else writes there). Every reader of the stream (every q/k/v, the norms, the
unembedding) treats the two blocks alike, except the query of C = a1.h0, which reads block A
only. The rewired model is the same with C's query reading block B instead. Swapping the two
blocks is a symmetry of the stream (A and B write the same), so the rewired model computes
exactly the same function; its graph is the base graph with the names of A and B swapped
(A -> C<q> becomes B -> C<q>, the edges into A become edges into B). Every top circuit that
holds both A and B (or neither) keeps its node set; its edges through C's query change.
"""

from __future__ import annotations

import torch

from circuit_plasticity.models.load import LoadedModel, load_model
from circuit_plasticity.models.native import load_stable_state_dict, stable_state_dict

A, B = slice(64, 80), slice(80, 96)
D_HEAD = 32


def _rows(h: int) -> slice:
    return slice(h * D_HEAD, (h + 1) * D_HEAD)


def planted_pair(seed: int = 0, gain: float = 3.0) -> tuple[LoadedModel, LoadedModel]:
    """(base, rewired): the construction above; `seed` draws A's output map."""
    base = load_model("toy-ioi")
    sd = stable_state_dict(base.model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key in ("embed.weight", "pos_embed.weight"):
            sd[key][:, 64:96] = 0
        for lay in range(3):
            p = f"blocks.{lay}."
            sd[p + "attn.o.weight"][64:96] = 0
            sd[p + "attn.o.bias"][64:96] = 0
            for x in ("q", "k", "v"):  # readers treat the two blocks alike
                sd[p + f"attn.{x}.weight"][:, B] = sd[p + f"attn.{x}.weight"][:, A]
            for x in ("weight", "bias"):
                sd[p + f"ln1.{x}"][B] = sd[p + f"ln1.{x}"][A]
        for x in ("weight", "bias"):
            sd[f"ln_final.{x}"][B] = sd[f"ln_final.{x}"][A]
        sd["unembed.weight"][:, B] = sd["unembed.weight"][:, A]
        for x in ("q", "k", "v"):  # B: a copy of A
            for part in ("weight", "bias"):
                sd[f"blocks.0.attn.{x}.{part}"][_rows(1)] = sd[f"blocks.0.attn.{x}.{part}"][_rows(0)]
        out = torch.randn(16, D_HEAD, generator=g) * 0.5
        sd["blocks.0.attn.o.weight"][:, 0 : 2 * D_HEAD] = 0  # A and B write their block only
        sd["blocks.0.attn.o.weight"][A, _rows(0)] = out
        sd["blocks.0.attn.o.weight"][B, _rows(1)] = out
        q = sd["blocks.1.attn.q.weight"]
        q[_rows(0), A] = gain * torch.randn(D_HEAD, 16, generator=g)
        q[_rows(0), B] = 0
    load_stable_state_dict(base.model, sd)
    rewired = load_model("toy-ioi")
    sd2 = {k: v.clone() for k, v in sd.items()}
    q2 = sd2["blocks.1.attn.q.weight"]
    q2[_rows(0), B], q2[_rows(0), A] = sd["blocks.1.attn.q.weight"][_rows(0), A], 0
    load_stable_state_dict(rewired.model, sd2)
    return base, rewired


def swap_names(name: str) -> str:
    """An edge name with heads A and B exchanged (as sender and as receiver)."""
    return name.replace("a0.h0", "@").replace("a0.h1", "a0.h0").replace("@", "a0.h1")
