"""Edge attribution (EAP, EAP-IG) against exact edge patching of every head -> head q/k/v and
head -> logits edge, same model and prompts, in one process; with their rank correlation.

Run: python benchmarks/bench_eap.py
"""

from __future__ import annotations

from common import best_of, report

from circuit_plasticity.analysis.attribution import edge_attribution, exact_edge_effects, spearman
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch

if __name__ == "__main__":
    toy = load_model("toy-ioi")
    batch = task_batch(toy, "ioi", n=80, seed=0)
    exact = exact_edge_effects(toy.model, batch)
    eap = exact.merge(edge_attribution(toy.model, batch), on=["sender", "receiver"])
    ig = exact.merge(edge_attribution(toy.model, batch, ig_steps=5), on=["sender", "receiver"])
    t_exact = best_of(lambda: exact_edge_effects(toy.model, batch), repeats=1)
    t_eap = best_of(lambda: edge_attribution(toy.model, batch))
    t_ig = best_of(lambda: edge_attribution(toy.model, batch, ig_steps=5))
    report(
        "edge_attribution",
        {
            "model": "toy-ioi",
            "prompts": 80,
            "edges_compared": len(exact),
            "exact_s": round(t_exact, 3),
            "eap_s": round(t_eap, 3),
            "eap_ig5_s": round(t_ig, 3),
            "eap_speedup": round(t_exact / t_eap, 1),
            "eap_ig_speedup": round(t_exact / t_ig, 1),
            "eap_spearman": round(spearman(eap.exact, eap.score), 3),
            "eap_ig_spearman": round(spearman(ig.exact, ig.score), 3),
        },
    )
