"""One table per model: every head's measurements (the registry's profile analyses) side by
side, and its classes."""

from __future__ import annotations

import pandas as pd
import torch

from circuit_plasticity.analysis import registry
from circuit_plasticity.analysis.ablation import group_means, knockout_hooks
from circuit_plasticity.analysis.classes import Thresholds, classify_heads
from circuit_plasticity.analysis.heads import head_dla, merge_head_tables
from circuit_plasticity.analysis.hooks import kv_head
from circuit_plasticity.analysis.metrics import evaluate
from circuit_plasticity.tasks.encode import TaskBatch
from circuit_plasticity.tasks.tokenizer import TextTokenizer


@torch.no_grad()
def head_profile(
    model, tok: TextTokenizer, batch: TaskBatch, thresholds: Thresholds | None = None
) -> tuple[pd.DataFrame, float]:
    """(per-head table with roles, the model's mean score on `batch`)."""
    score = float(evaluate(model, batch)["score"].mean())
    results = registry.run_all(model, batch, registry.PROFILE, registry.Options(tokenizer=tok))
    table = merge_head_tables(*(r.frame for r in results))
    thresholds = thresholds or Thresholds()
    first = classify_heads(table, score, thresholds)
    movers = [(int(r.layer), int(r.head)) for r in first.itertuples() if "name_mover" in r.roles.split(",")]
    gain = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, device=batch.device)
    if movers:  # joint knockout of the name movers: which heads' direct effect grows (self-repair)?
        means = group_means(model, batch)
        gain = (head_dla(model, batch, knockout_hooks(movers, means)) - head_dla(model, batch)).mean(0)
    table["dla_gain_without_name_movers"] = [float(gain[r.layer, r.head]) for r in table.itertuples()]
    # grouped-query attention: query heads with the same kv_head share their K and V weights
    table["kv_head"] = [kv_head(model, int(h)) for h in table["head"]]
    return classify_heads(table, score, thresholds), score
