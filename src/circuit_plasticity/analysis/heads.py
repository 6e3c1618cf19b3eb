"""Per-head measurements taken on the model itself, so head classes work for any model.

- attention from END to IO / S1 / S2, and from S2 to S1 (duplicate-token), on IOI prompts;
  from END to the start year YY on Greater-Than prompts (the year readers of Hanna et al.);
- previous-token and induction scores on repeated random token sequences;
- direct logit attribution (DLA) of every head and MLP to the task's answer direction at END:
  IO - S (IOI); the mean logit of the years above YY minus that of the years at or below it
  (Greater-Than), the linear direction along which a component writes "greater";
- Greater-Than only: each MLP's direct probability difference, the task score of the MLP's
  own direct logits (its output through the frozen final norm and the unembedding).
"""

from __future__ import annotations

import pandas as pd
import torch

from circuit_plasticity.analysis.hooks import head_labels, n_layers_heads, pattern_name, run_cached, z_name
from circuit_plasticity.analysis.runs import reuse
from circuit_plasticity.tasks.encode import TaskBatch


def _gather(pattern: torch.Tensor, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """pattern [n, heads, q, k] -> [n, heads] attention from query[i] to key[i]."""
    rows = torch.arange(pattern.shape[0], device=pattern.device)
    return pattern[rows, :, query, key]


ATTENTION_PAIRS = {  # per task: column -> (query role, key role)
    "ioi": {
        "attn_end_io": ("end", "io"),
        "attn_end_s1": ("end", "s1"),
        "attn_end_s2": ("end", "s2"),
        "attn_s2_s1": ("s2", "s1"),
    },
    "greater-than": {"attn_end_yy": ("end", "yy")},
}


@torch.no_grad()
def role_attention(model, batch: TaskBatch) -> pd.DataFrame:
    """Mean attention of every head between the task's roles, one pass over the prompts."""
    n_layers, _ = n_layers_heads(model)
    _, cache = run_cached(model, batch.tokens, [pattern_name(lay) for lay in range(n_layers)])
    p = batch.positions
    pairs = ATTENTION_PAIRS[batch.task]
    rows = []
    for layer in range(n_layers):
        pat = cache[pattern_name(layer)]
        scores = {k: _gather(pat, p[q], p[k2]).mean(0) for k, (q, k2) in pairs.items()}
        for head in range(pat.shape[1]):
            rows.append({"layer": layer, "head": head, **{k: float(v[head]) for k, v in scores.items()}})
    return pd.DataFrame(rows)


def repeated_random_tokens(
    vocab_ids: torch.Tensor, n: int, length: int, bos: int | None, seed: int = 0
) -> torch.Tensor:
    """[n, 1 + 2*length]: BOS, a random sequence, the same sequence again."""
    g = torch.Generator().manual_seed(seed)
    seq = vocab_ids[torch.randint(len(vocab_ids), (n, length), generator=g).to(vocab_ids.device)]
    parts = [seq, seq] if bos is None else [torch.full((n, 1), bos, device=vocab_ids.device), seq, seq]
    return torch.cat(parts, dim=1)


@torch.no_grad()
def sequence_scores(model, tokens: torch.Tensor, length: int) -> pd.DataFrame:
    """Previous-token and induction scores on repeated random sequences."""
    n_layers, _ = n_layers_heads(model)
    _, cache = run_cached(model, tokens, [pattern_name(lay) for lay in range(n_layers)])
    offset = tokens.shape[1] - 2 * length  # 1 with BOS
    second = torch.arange(offset + length, offset + 2 * length, device=tokens.device)  # the repeat
    rows = []
    for layer in range(n_layers):
        pat = cache[pattern_name(layer)]  # [n, heads, q, k]
        prev = pat[:, :, second, second - 1].mean((0, 2))
        induction = pat[:, :, second, second - length + 1].mean((0, 2))
        for head in range(pat.shape[1]):
            rows.append(
                {
                    "layer": layer,
                    "head": head,
                    "prev_token": float(prev[head]),
                    "induction": float(induction[head]),
                }
            )
    return pd.DataFrame(rows)


ioi_attention = role_attention  # the IOI name the callers know


def unembed_direction(model, batch: TaskBatch) -> torch.Tensor:
    """[n, d_model] per prompt: W_U[:, IO] - W_U[:, S] (IOI); Greater-Than: the mean unembedding
    of the years above YY minus the mean of the years at or below it."""
    w_u = model.W_U
    if batch.task == "ioi":
        return (w_u[:, batch.answer_id] - w_u[:, batch.wrong_id]).T
    from circuit_plasticity.analysis.metrics import greater_mask

    greater = greater_mask(batch).to(w_u.dtype)  # [n, 100]
    weights = greater / greater.sum(-1, keepdim=True).clamp(min=1)
    weights = weights - (1 - greater) / (1 - greater).sum(-1, keepdim=True).clamp(min=1)
    return weights @ w_u[:, batch.year_ids].T


def norm_gain(module, normalization_type: str) -> torch.Tensor | None:
    """The per-channel gain a norm multiplies by. LayerNorm: its weight. RMSNorm: probed with a
    large constant vector (rms = its value up to eps), because conventions differ: Gemma scales by
    (1 + weight), Llama by weight."""
    weight = getattr(module, "weight", None)
    if weight is None or normalization_type not in ("RMS", "RMSPre"):
        return weight
    probe = torch.full((1, 1, weight.shape[-1]), 1e3, dtype=weight.dtype, device=weight.device)
    return module(probe)[0, 0]


def final_norm_apply(model, component: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The final norm's linear map on one residual component, its scale frozen from the run."""
    return norm_apply(model, model.ln_final, component, scale)


def norm_apply(model, module, component: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """A norm's linear map (centre, divide by the frozen scale, gain; no bias) on a component."""
    norm = model.cfg.normalization_type
    if norm in ("LN", "LNPre"):
        component = component - component.mean(-1, keepdim=True)
    out = component / scale
    gain = norm_gain(module, norm) if norm in ("LN", "RMS") else None
    return out * gain if gain is not None else out


def post_attn_norms(model) -> bool:
    """Gemma-2 style blocks normalise the attention output before adding it to the residual."""
    return hasattr(model.blocks[0], "ln1_post")


def head_outputs(model, layer: int, z: torch.Tensor, cache: dict, index=None) -> torch.Tensor:
    """[..., heads, d_model]: each head's write to the residual stream from its z [..., heads, e]
    (through the post-attention norm with its scale frozen, where the block has one)."""
    out = torch.einsum("...he,hem->...hm", z, model.W_O[layer])
    if post_attn_norms(model):
        scale = cache[f"blocks.{layer}.ln1_post.hook_scale"]
        scale = scale if index is None else scale[index]
        out = norm_apply(model, model.blocks[layer].ln1_post, out, scale[..., None, :])
    return out


def head_output_hooks(model) -> list[str]:
    """Cache entries `head_outputs` needs besides z."""
    if not post_attn_norms(model):
        return []
    return [f"blocks.{lay}.ln1_post.hook_scale" for lay in range(model.cfg.n_layers)]


@torch.no_grad()
def head_dla(model, batch: TaskBatch, fwd_hooks: list | None = None) -> torch.Tensor:
    """[n, layers, heads]: each head's direct effect on logit(answer) - logit(wrong) at END,
    through the final norm with its scale frozen from the run (before any final logit
    soft-capping, Gemma-2's, which is not linear) (optionally under `fwd_hooks`,
    e.g. with the name movers knocked out, to see backups take over). Without hooks, shared by
    the analyses of one batch (analysis.runs)."""
    if fwd_hooks is None:
        return reuse("head_dla", model, (batch,), lambda: _head_dla(model, batch, None))
    return _head_dla(model, batch, fwd_hooks)


def _head_dla(model, batch: TaskBatch, fwd_hooks: list | None) -> torch.Tensor:
    n_layers, _ = n_layers_heads(model)
    names = [z_name(lay) for lay in range(n_layers)] + ["ln_final.hook_scale"] + head_output_hooks(model)
    _, cache = run_cached(model, batch.tokens, names, fwd_hooks)
    rows = torch.arange(len(batch), device=batch.device)
    at_end = (rows, batch.end)
    scale = cache["ln_final.hook_scale"][at_end]  # [n, 1]
    direction = unembed_direction(model, batch)
    per_layer = []
    for layer in range(n_layers):
        out = head_outputs(model, layer, cache[z_name(layer)][at_end], cache, at_end)  # [n, heads, d]
        normed = final_norm_apply(model, out, scale[:, None, :])
        per_layer.append(torch.einsum("nhm,nm->nh", normed, direction))
    return torch.stack(per_layer, dim=1)


def direct_logit_attribution(model, batch: TaskBatch) -> pd.DataFrame:
    """Mean direct logit attribution per head, as a table."""
    dla = head_dla(model, batch).mean(0)
    return pd.DataFrame(
        [{"layer": lay, "head": h, "dla": float(dla[lay, h])} for lay, h in head_labels(model)]
    )


@torch.no_grad()
def mlp_direct(model, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per MLP, its output at END through the final norm (scale frozen from the run):
    ([n, mlps, d_model] normed outputs, [n, mlps] DLA along the task's answer direction).
    Empty ([n, 0, ...]) in attention-only models."""
    n = len(batch)
    mlps = [] if model.cfg.attn_only else list(range(model.cfg.n_layers))
    if not mlps:
        empty = torch.zeros(n, 0, device=batch.device)
        return empty[..., None].expand(n, 0, int(model.cfg.d_model)), empty
    names = [f"blocks.{lay}.hook_mlp_out" for lay in mlps] + ["ln_final.hook_scale"]
    _, cache = run_cached(model, batch.tokens, names)
    rows = torch.arange(n, device=batch.device)
    scale = cache["ln_final.hook_scale"][rows, batch.end]
    at_end = [cache[f"blocks.{lay}.hook_mlp_out"][rows, batch.end] for lay in mlps]
    normed = torch.stack([final_norm_apply(model, out, scale) for out in at_end], dim=1)
    return normed, torch.einsum("nlm,nm->nl", normed, unembed_direction(model, batch))


@torch.no_grad()
def mlp_dla(model, batch: TaskBatch) -> pd.DataFrame:
    """Each MLP's mean direct effect along the task's answer direction at END (none in
    attention-only models); Greater-Than adds `direct_prob_diff`, the task score of the MLP's
    own direct logits. Rows use head = -1 so they sit in the same tidy tables as heads."""
    from circuit_plasticity.analysis.metrics import task_score

    normed, dla = mlp_direct(model, batch)
    out = []
    for lay in range(dla.shape[1]):
        row = {"layer": lay, "head": -1, "dla": float(dla[:, lay].mean())}
        if batch.task == "greater-than":
            row["direct_prob_diff"] = float(task_score(normed[:, lay] @ model.W_U, batch).mean())
        out.append(row)
    if not out:
        return pd.DataFrame(
            {"layer": pd.Series(dtype=int), "head": pd.Series(dtype=int), "dla": pd.Series(dtype=float)}
        )
    return pd.DataFrame(out)


def component_dla(model, batch: TaskBatch) -> torch.Tensor:
    """[n, components] DLA per prompt in `hooks.component_labels` order: heads, then MLPs."""
    heads = head_dla(model, batch)
    return torch.cat([heads.reshape(heads.shape[0], -1), mlp_direct(model, batch)[1]], dim=1)


def merge_head_tables(*tables: pd.DataFrame) -> pd.DataFrame:
    out = tables[0]
    for t in tables[1:]:
        out = out.merge(t, on=["layer", "head"])
    return out


__all__ = ["direct_logit_attribution", "head_labels", "ioi_attention", "role_attention", "sequence_scores"]
