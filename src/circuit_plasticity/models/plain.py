"""The embedded models' forward pass without hook points, for the runs that read only logits.

The evaluations during training and weight patching need the logits at END and nothing in
between: given END positions, the last block attends from END alone and only END is unembedded.
Through the bridge every module fires its hook points and the LayerNorms run a from-scratch
Python normalisation; on the toys the same arithmetic written plainly evaluates 1.2-1.7x faster
(benchmarks/bench_plain_forward.py). This module is that plain arithmetic, read off the same
parameters (a LoRA parametrisation or a gradient mask applies as it does through the bridge,
and gradients land on the same tensors).

Training steps stay on the bridge's forward: this one rounds differently (logits agree to about
1e-5), and over hundreds of steps that would move every trained model, the shipped toys'
reproducible pretraining included, away from the weights and numbers already published.

Only TransformerLens-native models (the toys, and anything this tool trained from them) of the
GPT-2 layout are supported (`plain_supported`): pre-LayerNorm blocks, learned positions, causal
multi-head attention, an ungated MLP or none. Every other model, and any model with a hook
attached, runs through the bridge (`logits`). The tests hold this forward to the bridge's
logits and gradients on the attention-only toy and on the toys with MLPs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _inner(module: nn.Module) -> nn.Module:
    """The torch module a bridge component wraps (the module itself when not wrapped)."""
    return getattr(module, "_original_component", module)


def _native(model) -> nn.Module | None:
    native = getattr(model, "original_model", None)
    return native if type(native).__name__ == "NativeModel" else None


def plain_supported(model) -> bool:
    """Whether `plain_logits(model, ...)` computes exactly what `model(...)` does."""
    native = _native(model)
    if native is None:
        return False
    cfg = native.cfg
    if (cfg.positional_embedding_type or "standard").lower() != "standard" or native.pos is None:
        return False
    if cfg.attention_dir != "causal" or float(cfg.output_logits_soft_cap) > 0:
        return False
    if float(cfg.attn_scores_soft_cap) > 0 or getattr(cfg, "use_qk_norm", False):
        return False
    for block in native.layers:
        block = _inner(block)
        attn = _inner(block.attn)
        norms = [block.ln1] + ([] if cfg.attn_only else [block.ln2])
        if not all(type(_inner(n)) is nn.LayerNorm for n in norms):
            return False
        if attn.n_kv_heads != attn.n_heads or attn.rotary is not None:
            return False
        if not cfg.attn_only:
            mlp = _inner(block.mlp)
            if not hasattr(mlp, "fc_in") or mlp.ln is not None:  # gated, or SoLU's inner norm
                return False
    return type(_inner(native.ln_out)) is nn.LayerNorm


def _norm(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    module = _inner(module)
    return F.layer_norm(x, module.normalized_shape, module.weight, module.bias, module.eps)


def _linear(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    module = _inner(module)
    return F.linear(x, module.weight, module.bias)


def plain_logits(model, tokens: torch.Tensor, end: torch.Tensor | None = None) -> torch.Tensor:
    """[batch, seq, vocab] logits of a supported model (`plain_supported`), no hook points; with
    `end` ([batch] positions) only those rows, [batch, vocab]: the last block then attends from
    END alone and the unembedding reads END alone (a metric at END needs nothing else)."""
    native = _native(model)
    cfg = native.cfg
    batch, seq = tokens.shape
    x = F.embedding(tokens, _inner(native.tok_embed).weight) + _inner(native.pos).weight[:seq]
    last = len(native.layers) - 1
    for i, block in enumerate(native.layers):
        block = _inner(block)
        attn = _inner(block.attn)
        h = _norm(x, block.ln1)

        def heads(projection: nn.Module, h=h, attn=attn) -> torch.Tensor:
            length = h.shape[1]
            return _linear(h, projection).view(batch, length, attn.n_heads, attn.d_head).transpose(1, 2)

        if end is None or i < last:
            z = F.scaled_dot_product_attention(
                heads(attn.q), heads(attn.k), heads(attn.v), is_causal=True, scale=1.0 / attn.scale
            )
        else:  # END's query alone, over the keys at or before END
            rows = torch.arange(batch, device=tokens.device)
            visible = torch.arange(seq, device=tokens.device)[None, :] <= end[:, None]
            z = F.scaled_dot_product_attention(
                heads(attn.q, h[rows, end][:, None]),
                heads(attn.k),
                heads(attn.v),
                attn_mask=visible[:, None, None, :],
                scale=1.0 / attn.scale,
            )
            x = x[rows, end][:, None]
        x = x + _linear(z.transpose(1, 2).reshape(batch, x.shape[1], -1), attn.o)
        if not cfg.attn_only:
            mlp = _inner(block.mlp)
            hidden = mlp.act(_linear(_norm(x, block.ln2), mlp.fc_in))  # the model's own activation
            x = x + _linear(hidden, mlp.fc_out)
    out = _linear(_norm(x, native.ln_out), native.head)
    return out if end is None else out[:, 0]


def _records_only(hook) -> bool:
    """The bridge's own capture hooks (wired once per block, they record a block's input for
    its hook points and change nothing)."""
    return "_maybe_wire_capture_hooks" in getattr(hook, "__qualname__", "")


def has_hooks(model) -> bool:
    """Whether any hook could change or observe the model's forward: one on any of its modules
    (hook points or not; forward, pre-forward or backward) or a global module hook. The
    bridge's own capture hooks do not count."""
    from torch.nn.modules import module as torch_module

    global_hooks = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    if any(getattr(torch_module, name, None) for name in global_hooks):
        return True
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(
        not _records_only(hook)
        for module in model.modules()
        for kind in kinds
        for hook in getattr(module, kind, {}).values()
    )


def logits(model, tokens: torch.Tensor, end: torch.Tensor | None = None) -> torch.Tensor:
    """[batch, seq, vocab] (with `end`: [batch, vocab] at those positions): the plain forward
    where it is exact (`plain_supported`) and no hook is attached, else the model's own."""
    if plain_supported(model) and not has_hooks(model):
        return plain_logits(model, tokens, end)
    out = model(tokens)
    return out if end is None else out[torch.arange(out.shape[0], device=out.device), end]
