"""All-heads activation patching: our batched engine against transformer_lens.patching (one
forward pass per head), same model, same prompts, same metric, in one process.

Run: python benchmarks/bench_patching.py [--twelve-layer | --gpt2-small] [--n N]
(--twelve-layer: a random 12-layer GPT-2, d_model 256, 8 heads, the tests' BPE vocabulary;
--gpt2-small: a random-weight GPT-2-small-sized model, 50257-token vocabulary.)
"""

from __future__ import annotations

import torch
from common import best_of, random_gpt2_dir, report

from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.patching import patch_each_head, z_cache
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


def main(n: int = 200, gpt2_small: bool = False, repeats: int = 3, twelve_layer: bool = False) -> None:
    import tempfile
    from pathlib import Path

    from transformer_lens import patching

    name = "toy-ioi"
    if twelve_layer:
        name = "gpt2 12 layers, d_model 256, 8 heads (random)"
        out = Path(tempfile.mkdtemp()) / "gpt2-12"
        loaded = load_model(str(random_gpt2_dir(out, n_layer=12, n_embd=256, n_head=8, n_positions=64)))
    elif gpt2_small:
        from gpu_study import make_model_dir

        name = "gpt2-small-sized (random)"

        loaded = load_model(str(make_model_dir(Path(tempfile.mkdtemp()) / "gpt2-random", tiny=False)))
    else:
        loaded = load_model("toy-ioi")
    model, batch = loaded.model, task_batch(loaded, "ioi", n=n, seed=0)

    def metric(logits):
        return task_score(end_logits(logits, batch), batch).mean()

    def theirs():
        _, cache = model.run_with_cache(batch.tokens)
        return patching.get_act_patch_attn_head_out_all_pos(model, batch.corrupted, cache, metric)

    def ours():
        clean_z = z_cache(model, batch.tokens)
        return patch_each_head(model, batch, batch.corrupted, clean_z).mean(1)

    with torch.no_grad():
        a, b = ours().view(model.cfg.n_layers, -1), theirs()
        max_diff = float((a - b).abs().max())
        warmup = 0 if twelve_layer or gpt2_small else 1  # the baseline alone takes minutes there
        t_theirs, t_ours = best_of(theirs, repeats, warmup), best_of(ours, repeats, warmup)
    report(
        "all_heads_patching",
        {
            "model": name,
            "layers": model.cfg.n_layers,
            "prompts": n,
            "heads": model.cfg.n_layers * model.cfg.n_heads,
            "transformer_lens_s": round(t_theirs, 3),
            "ours_s": round(t_ours, 3),
            "speedup": round(t_theirs / t_ours, 2),
            "max_abs_diff": max_diff,
        },
    )


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--gpt2-small", action="store_true")
    parser.add_argument("--twelve-layer", action="store_true")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    main(args.n, args.gpt2_small, args.repeats, args.twelve_layer)
