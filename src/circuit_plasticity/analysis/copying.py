"""Copy scores of every head's OV circuit on names (Wang et al.'s name-mover test).

A name's token embedding (through MLP0 where the model has one, as Wang et al. do, since GPT-2
builds its token representation there) is pushed through a head's OV circuit and the
unembedding; the head copies the name if the name's own logit is among the top k. With the
OV output negated the same test gives the negative copy score (copy suppression).
"""

from __future__ import annotations

import pandas as pd
import torch

from circuit_plasticity.analysis.heads import final_norm_apply, post_attn_norms
from circuit_plasticity.analysis.hooks import kv_head, n_layers_heads


@torch.no_grad()
def copy_scores(model, name_ids: torch.Tensor, top_k: int = 5) -> pd.DataFrame:
    n_layers, n_heads = n_layers_heads(model)
    resid = model.embed(name_ids[None])[0]  # [names, d_model], scaled as the model scales it (Gemma)
    block0 = model.blocks[0]
    if not getattr(model.cfg, "attn_only", False) and hasattr(block0, "mlp"):
        mlp_out = block0.mlp(block0.ln2(resid[:, None]))
        if hasattr(block0, "ln2_post"):  # Gemma-2 normalises the MLP output too
            mlp_out = block0.ln2_post(mlp_out)
        resid = resid + mlp_out[:, 0]
    centre = model.cfg.normalization_type in ("LN", "LNPre")
    rows = []
    for layer in range(n_layers):
        normed = model.blocks[layer].ln1(resid[:, None])[:, 0]
        for head in range(n_heads):
            w_v = model.W_V[layer, kv_head(model, head)]  # GQA: the K/V head this query head reads
            ov = normed @ w_v @ model.W_O[layer, head]  # [names, d_model]
            if post_attn_norms(model):
                ov = model.blocks[layer].ln1_post(ov[:, None])[:, 0]
            out = {}
            for sign, key in ((1.0, "copy_score"), (-1.0, "neg_copy_score")):
                x = sign * ov
                centred = x - x.mean(-1, keepdim=True) if centre else x
                scale = centred.pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
                logits = final_norm_apply(model, x, scale) @ model.W_U
                top = logits.topk(top_k, dim=-1).indices
                out[key] = float((top == name_ids[:, None]).any(-1).float().mean())
            rows.append({"layer": layer, "head": head, **out})
    return pd.DataFrame(rows)
