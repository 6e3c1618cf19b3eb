"""Edge attribution (EAP, EAP-IG) against exact edge patching of every edge, same model and
prompts, in one process, with their rank correlation; and the cost of one EAP-IG integration
step in units of a plain forward + backward pass of the model on the same prompts (goal: <= 3).

Models: the toy (3 attention-only layers) and a random 12-layer GPT-2 with MLPs (d_model 256).
Run: python benchmarks/bench_eap.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from common import best_of, random_gpt2_dir, report

from circuit_plasticity.analysis.attribution import edge_attribution, exact_edge_effects, spearman
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch

ROOT = Path(__file__).resolve().parents[1]


def gpt2_dir(layers: int, d_model: int) -> Path:
    out = Path(tempfile.gettempdir()) / f"gpt2-random-{layers}x{d_model}"
    return random_gpt2_dir(out, n_layer=layers, n_embd=d_model, n_head=8)


def forward_backward(model, batch) -> None:
    """The plain unit of cost: one forward and one backward pass of the mean score."""
    embed = {}

    def leaf(act, hook):
        embed["x"] = act.detach().requires_grad_(True)
        return embed["x"]

    with torch.enable_grad():
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=[("blocks.0.hook_in", leaf)])
        torch.autograd.grad(task_score(end_logits(logits, batch), batch).mean(), embed["x"])


def bench(name: str, loaded, n: int, exact_too: bool) -> None:
    model, batch = loaded.model, task_batch(loaded, "ioi", n=n, seed=0)
    steps = 5
    t_fb = best_of(lambda: forward_backward(model, batch))
    t_ig1 = best_of(lambda: edge_attribution(model, batch, ig_steps=1))
    t_ig = best_of(lambda: edge_attribution(model, batch, ig_steps=steps))
    step_cost = (t_ig - t_ig1) / (steps - 1) / t_fb
    result = {
        "model": name,
        "prompts": n,
        "forward_backward_s": round(t_fb, 3),
        "eap_ig5_s": round(t_ig, 3),
        "ig_step_in_forward_backward_units": round(step_cost, 2),
    }
    if exact_too:
        exact = exact_edge_effects(model, batch).set_index("edge")
        eap = exact.join(edge_attribution(model, batch).edge_table().set_index("edge"))
        ig = exact.join(edge_attribution(model, batch, ig_steps=steps).edge_table().set_index("edge"))
        t_exact = best_of(lambda: exact_edge_effects(model, batch), repeats=1, warmup=0)
        t_eap = best_of(lambda: edge_attribution(model, batch))
        result |= {
            "edges": len(exact),
            "exact_edge_patching_s": round(t_exact, 3),
            "eap_s": round(t_eap, 3),
            "eap_speedup": round(t_exact / t_eap, 1),
            "eap_ig_speedup": round(t_exact / t_ig, 1),
            "eap_spearman": round(spearman(eap.exact, eap.score), 3),
            "eap_ig_spearman": round(spearman(ig.exact, ig.score), 3),
        }
    report("edge_attribution", result)


if __name__ == "__main__":
    torch.set_num_threads(2)
    bench("toy-ioi", load_model("toy-ioi", "cpu"), 80, exact_too=True)
    bench("gpt2-random-12x256", load_model(str(gpt2_dir(12, 256)), "cpu"), 40, exact_too=False)
