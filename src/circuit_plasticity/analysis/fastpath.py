"""A patching fast path that never recomputes what a run already has.

When a set of heads is patched and the earliest of them sits in layer L, everything before
layer L is unchanged: we start from the cached residual stream. Layer L itself changes only
by the patched heads' outputs, so its new output is the cached one plus (z_new - z_old) W_O.
Later layers are recomputed, the last one only at END (the metric reads nothing else), and the
unembedding only at END. For a 3-layer model, patching a head of the last layer costs one
LayerNorm and one unembedding row instead of a whole forward pass.

A member (layer, -1) is that layer's MLP: its output is replaced by
`replacement[mlp_name(layer)]` in the copies that hold it (knockout of circuits with MLPs).

Supported: pre-LayerNorm GPT-2-style blocks (learned positions, sequential attention and
MLP, LN or no norm). Everything else (rotary positions, parallel attention and MLP as in
Pythia, RMSNorm, grouped-query attention, gated MLPs, Gemma-2's extra norms and soft-capping)
uses the hook path, which is exact on any architecture; `supported` says which.
The tests check this path against the hook path and TransformerLens to 1e-4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from circuit_plasticity.analysis.hooks import mlp_name, run_cached

Head = tuple[int, int]
ACTS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def supported(model) -> bool:
    cfg = model.cfg
    return (
        cfg.normalization_type == "LN"
        and cfg.positional_embedding_type == "standard"
        and not cfg.parallel_attn_mlp
        and not cfg.scale_attn_by_inverse_layer_idx
        and (cfg.attn_only or cfg.act_fn in ACTS)
        and not getattr(cfg, "use_qk_norm", False)
        and getattr(cfg, "n_key_value_heads", None) in (None, cfg.n_heads)
        and not getattr(cfg, "gated_mlp", False)
        and not getattr(cfg, "attn_scores_soft_cap", -1) > 0
        and not getattr(cfg, "output_logits_soft_cap", -1) > 0
        and not hasattr(model.blocks[0], "ln1_post")
    )


def _ln(x: torch.Tensor, module, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), module.weight, module.bias, eps)


class FastPatcher:
    """Caches one base run (residual stream before each block, every head's z) and evaluates
    END logits with any sets of heads' z replaced."""

    def __init__(self, model, tokens: torch.Tensor, end: torch.Tensor):
        self.model, self.cfg = model, model.cfg
        self.n_layers = model.cfg.n_layers
        names = [f"blocks.{lay}.hook_resid_pre" for lay in range(self.n_layers)]
        names += [f"blocks.{lay}.attn.hook_z" for lay in range(self.n_layers)]
        names += [f"blocks.{lay}.hook_attn_out" for lay in range(self.n_layers)]
        _, cache = run_cached(model, tokens, names)
        self.resid = [cache[f"blocks.{lay}.hook_resid_pre"] for lay in range(self.n_layers)]
        self.z = [cache[f"blocks.{lay}.attn.hook_z"] for lay in range(self.n_layers)]
        self.attn_out = [cache[f"blocks.{lay}.hook_attn_out"] for lay in range(self.n_layers)]
        self.end = end
        self._weights: dict[int, tuple[torch.Tensor, ...]] = {}
        d_head = self.cfg.d_head
        self.scale = (
            self.cfg.attn_scale
            if self.cfg.use_attn_scale and self.cfg.attn_scale > 0
            else (math.sqrt(d_head) if self.cfg.use_attn_scale else 1.0)
        )

    def _fused(self, layer: int) -> tuple[torch.Tensor, ...]:
        """Per-layer projections as plain matrices ([d, H*e] and [H*e, d]): matmuls, not einsums."""
        if layer not in self._weights:
            m, h, e = self.model, self.cfg.n_heads, self.cfg.d_head
            d = m.W_Q.shape[2]

            def cols(w: torch.Tensor) -> torch.Tensor:  # [H, d, e] -> [d, H*e]
                return w.permute(1, 0, 2).reshape(d, h * e)

            self._weights[layer] = (
                cols(m.W_Q[layer]),
                m.b_Q[layer].reshape(-1),
                cols(m.W_K[layer]),
                m.b_K[layer].reshape(-1),
                cols(m.W_V[layer]),
                m.b_V[layer].reshape(-1),
                m.W_O[layer].reshape(h * e, -1),
            )
        return self._weights[layer]

    def _attention(self, layer: int, x: torch.Tensor, z_patch, only_end: torch.Tensor | None) -> torch.Tensor:
        m, h, e = self.model, self.cfg.n_heads, self.cfg.d_head
        wq, bq, wk, bk, wv, bv, wo = self._fused(layer)
        b, seq, _ = x.shape
        a = _ln(x, m.blocks[layer].ln1, self.cfg.eps)
        k = (a @ wk + bk).view(b, seq, h, e).transpose(1, 2)  # [b, H, k, e]
        v = (a @ wv + bv).view(b, seq, h, e).transpose(1, 2)
        rows = torch.arange(b, device=x.device)
        qa = a if only_end is None else a[rows, only_end][:, None]
        q = (qa @ wq + bq).view(b, qa.shape[1], h, e).transpose(1, 2)  # [b, H, q, e]
        scores = (q @ k.transpose(-1, -2)) / self.scale
        qpos = torch.arange(seq, device=x.device)[None, :] if only_end is None else only_end[:, None]
        mask = torch.arange(seq, device=x.device)[None, None, :] > qpos[:, :, None]  # [b or 1, q, k]
        scores = scores.masked_fill(mask[:, None], float("-inf"))
        z = (scores.softmax(-1) @ v).transpose(1, 2)  # [b, q, H, e]
        z = z_patch(layer, z, only_end)
        return z.reshape(b, z.shape[1], h * e) @ wo + m.b_O[layer]

    def _mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.attn_only:
            return torch.zeros_like(x)
        m = self.model
        h = _ln(x, m.blocks[layer].ln2, self.cfg.eps) @ m.W_in[layer] + m.b_in[layer]
        return ACTS[self.cfg.act_fn](h) @ m.W_out[layer] + m.b_out[layer]

    @torch.no_grad()
    def scores(
        self,
        sets: Sequence[Sequence[Head]],
        replacement: dict[int, torch.Tensor],
        positions: torch.Tensor | None,
        score: Callable[[torch.Tensor, int], torch.Tensor],
        sets_per_pass: int = 16,
    ) -> torch.Tensor:
        """[len(sets), n, ...]: `score(end_logits [k*n, vocab], k)` ([k*n, ...]) with each set's z
        replaced."""
        n = self.resid[0].shape[0]
        out = None
        by_start: dict[int, list[int]] = {}
        for i, members in enumerate(sets):
            by_start.setdefault(min((lay for lay, _ in members), default=self.n_layers), []).append(i)
        for start, idx in by_start.items():
            for j in range(0, len(idx), sets_per_pass):
                chunk = idx[j : j + sets_per_pass]
                logits = self._run_group(start, [sets[i] for i in chunk], replacement, positions)
                scored = score(logits, len(chunk))
                scored = scored.view(len(chunk), n, *scored.shape[1:])
                if out is None:
                    out = torch.empty(len(sets), *scored.shape[1:], device=scored.device)
                out[chunk] = scored
        return out if out is not None else torch.empty(0, n, device=self.end.device)

    def _run_group(self, start: int, sets, replacement, positions) -> torch.Tensor:
        k, n = len(sets), self.resid[0].shape[0]
        end = self.end.repeat(k)  # [k*n] END positions
        rows = torch.arange(n, device=self.end.device)
        pos_all = None if positions is None else positions

        def mlp(layer: int, x: torch.Tensor, only_end: torch.Tensor | None) -> torch.Tensor:
            return self._mlp_replaced(layer, x, sets, replacement, positions, only_end)

        def replaced(layer: int, z: torch.Tensor, only_end: torch.Tensor | None) -> torch.Tensor:
            """z [k*n, q, H, e] with each copy's heads of `layer` replaced."""
            heads_by_copy = [[h for lay, h in s if lay == layer and h >= 0] for s in sets]
            if not any(heads_by_copy):
                return z
            z = z.clone().view(k, n, *z.shape[1:])
            src = replacement[layer]
            for c, heads in enumerate(heads_by_copy):
                for h in heads:
                    if only_end is None:
                        if pos_all is None:
                            z[c, :, :, h] = src[:, :, h]
                        else:
                            z[c, rows, pos_all, h] = src[rows, pos_all, h]
                    else:  # one query row (END) per prompt
                        keep = None if pos_all is None else (pos_all == self.end)
                        new = src[rows, self.end, h]
                        z[c, :, 0, h] = (
                            new if keep is None else torch.where(keep[:, None], new, z[c, :, 0, h])
                        )
            return z.view(k * n, *z.shape[2:])

        if start >= self.n_layers:  # nothing patched
            x = self.resid[-1] + self.attn_out[-1]
            x = (x + self._mlp(self.n_layers - 1, x)).repeat(k, 1, 1)
            return self._unembed(x[torch.arange(k * n, device=end.device), end])
        # layer `start`: its cached output plus each copy's patched heads' change (no recomputation)
        last = self.n_layers - 1
        only_end = self.end if start == last else None
        x = self._post_attention(start, sets, replacement, positions, only_end)  # [k, n, seq|1, d]
        if start == last:
            x = x.reshape(k * n, 1, -1)
            return self._unembed((x + mlp(start, x, self.end))[:, 0])
        x = x.reshape(k * n, *x.shape[2:])
        x = x + mlp(start, x, None)
        for layer in range(start + 1, last):
            x = x + self._attention(layer, x, replaced, None)
            x = x + mlp(layer, x, None)
        attn = self._attention(last, x, replaced, end)  # [k*n, 1, d]
        x_end = x[torch.arange(k * n, device=end.device), end][:, None] + attn
        return self._unembed((x_end + mlp(last, x_end, self.end))[:, 0])

    def _mlp_replaced(self, layer, x, sets, replacement, positions, only_end) -> torch.Tensor:
        """The MLP's output on x [k*n, seq|1, d], replaced in the copies whose set holds
        (layer, -1): everywhere, or at `positions` (at END only when x holds END rows alone)."""
        holders = [c for c, members in enumerate(sets) if (layer, -1) in members]
        out = self._mlp(layer, x)
        if not holders:
            return out
        k, n = len(sets), self.resid[0].shape[0]
        rows = torch.arange(n, device=x.device)
        src = replacement[mlp_name(layer)]  # [n, seq, d]
        out = out.view(k, n, *out.shape[1:])
        for c in holders:
            if only_end is not None:  # one row (END) per prompt
                new = src[rows, only_end]
                keep = None if positions is None else (positions == only_end)
                out[c, :, 0] = new if keep is None else torch.where(keep[:, None], new, out[c, :, 0])
            elif positions is None:
                out[c] = src
            else:
                out[c, rows, positions] = src[rows, positions]
        return out.view(k * n, *out.shape[2:])

    def _post_attention(self, layer, sets, replacement, positions, only_end) -> torch.Tensor:
        """[k, n, seq (or 1 at END), d]: the cached residual after `layer`'s attention, plus each
        copy's patched heads' output change (z_new - z_old) W_O."""
        n = self.resid[0].shape[0]
        rows = torch.arange(n, device=self.end.device)
        base = self.resid[layer] + self.attn_out[layer]
        diff = replacement[layer] - self.z[layer]  # [n, seq, H, e]
        if positions is not None:  # the patch touches one position per prompt
            keep = torch.zeros(diff.shape[:2], dtype=diff.dtype, device=diff.device)
            keep[rows, positions] = 1
            diff = diff * keep[:, :, None, None]
        if only_end is not None:
            base, diff = base[rows, only_end][:, None], diff[rows, only_end][:, None]
        w_o = self.model.W_O[layer]  # [H, e, d]
        used = sorted({h for s in sets for lay, h in s if lay == layer and h >= 0})
        change = {h: diff[:, :, h] @ w_o[h] for h in used}
        out = base.unsqueeze(0).repeat(len(sets), 1, 1, 1)
        for c, members in enumerate(sets):
            for lay, h in members:
                if lay == layer and h >= 0:
                    out[c] += change[h]
        return out

    def _unembed(self, x_end: torch.Tensor) -> torch.Tensor:
        m = self.model
        return _ln(x_end, m.ln_final, self.cfg.eps) @ m.W_U + m.b_U
