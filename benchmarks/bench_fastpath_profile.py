"""Where the fast patching path's time goes, and two constant-factor alternatives measured
against it (BENCHMARKS.md, "All-heads activation patching on a 12-layer model").

The model and prompts of `bench_patching.py --twelve-layer` (random 12-layer GPT-2, d_model
256, 8 heads, 40 IOI prompts, all 96 heads patched at all positions). Reports: best-of-3 time
of the current fast path with 16 and 8 copies per pass, of a variant with PyTorch's fused
attention and one fused QKV matmul, their largest difference from the current path, and a
cProfile split of one current run (MLP, attention, the rest).

Run: python benchmarks/bench_fastpath_profile.py
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import random_gpt2_dir, report

from circuit_plasticity.analysis import fastpath
from circuit_plasticity.analysis.metrics import task_score
from circuit_plasticity.analysis.patching import repeat_batch, z_cache
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


class FusedAttention(fastpath.FastPatcher):
    """The same path with scaled_dot_product_attention and a single QKV matmul."""

    def _qkv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = ("qkv", layer)
        if key not in self._weights:
            wq, bq, wk, bk, wv, bv, _ = self._fused(layer)
            self._weights[key] = (torch.cat([wq, wk, wv], 1).contiguous(), torch.cat([bq, bk, bv]))
        return self._weights[key]

    def _attention(self, layer, x, z_patch, only_end):
        m, h, e = self.model, self.cfg.n_heads, self.cfg.d_head
        wq, bq, wk, bk, wv, bv, wo = self._fused(layer)
        b, seq, _ = x.shape
        a = fastpath._ln(x, m.blocks[layer].ln1, self.cfg.eps)
        if only_end is None:
            wqkv, bqkv = self._qkv(layer)
            q, k, v = ((a @ wqkv + bqkv).view(b, seq, 3, h, e)[:, :, i].transpose(1, 2) for i in range(3))
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1 / self.scale)
        else:
            k = (a @ wk + bk).view(b, seq, h, e).transpose(1, 2)
            v = (a @ wv + bv).view(b, seq, h, e).transpose(1, 2)
            q = (a[torch.arange(b), only_end][:, None] @ wq + bq).view(b, 1, h, e).transpose(1, 2)
            mask = torch.arange(seq)[None, None, :] <= only_end[:, None, None]
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=1 / self.scale)
        z = z_patch(layer, z.transpose(1, 2), only_end)
        return z.reshape(b, z.shape[1], h * e) @ wo + m.b_O[layer]


def main() -> None:
    torch.set_num_threads(2)
    out = Path(tempfile.gettempdir()) / "gpt2-12-fastpath"
    loaded = load_model(
        str(random_gpt2_dir(out, n_layer=12, n_embd=256, n_head=8, n_positions=64)), device="cpu"
    )
    model, batch = loaded.model, task_batch(loaded, "ioi", n=40, seed=0)
    clean_z = z_cache(model, batch.tokens)
    sets = [[(lay, h)] for lay in range(12) for h in range(8)]

    def score(end_logits, k):
        return task_score(end_logits, repeat_batch(batch, k))

    def run(cls, per_pass=16):
        return cls(model, batch.corrupted, batch.end).scores(sets, clean_z, None, score, per_pass)

    def best(cls, per_pass):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            result = run(cls, per_pass)
            times.append(time.perf_counter() - start)
        return min(times), result

    with torch.no_grad():
        reference = run(fastpath.FastPatcher)
        t16, _ = best(fastpath.FastPatcher, 16)
        t8, _ = best(fastpath.FastPatcher, 8)
        t_fused, fused = best(FusedAttention, 16)
        profile = cProfile.Profile()
        profile.enable()
        run(fastpath.FastPatcher)
        profile.disable()
    stats = pstats.Stats(profile).stats
    total = sum(v[2] for v in stats.values())
    share = {
        part: sum(v[3] for k, v in stats.items() if k[0].endswith("fastpath.py") and k[2] == fn)
        / max(sum(v[3] for k, v in stats.items() if k[2] == "scores" and k[0].endswith("fastpath.py")), 1e-9)
        for part, fn in (("mlp", "_mlp"), ("attention", "_attention"))
    }
    report(
        "fastpath_profile_12_layer",
        {
            "current_16_per_pass_s": round(t16, 3),
            "current_8_per_pass_s": round(t8, 3),
            "fused_attention_s": round(t_fused, 3),
            "fused_max_abs_diff": float((fused - reference).abs().max()),
            "share_of_time_mlp": round(share["mlp"], 2),
            "share_of_time_attention": round(share["attention"], 2),
            "profiled_calls_s": round(total, 2),
        },
    )


if __name__ == "__main__":
    main()
