"""One table per model: every head's measurements side by side, and its classes."""

from __future__ import annotations

import pandas as pd
import torch

from circuit_plasticity.analysis.ablation import group_means, knockout_each_head, knockout_hooks
from circuit_plasticity.analysis.classes import Thresholds, classify_heads
from circuit_plasticity.analysis.copying import copy_scores
from circuit_plasticity.analysis.heads import (
    direct_logit_attribution,
    head_dla,
    merge_head_tables,
    repeated_random_tokens,
    role_attention,
    sequence_scores,
)
from circuit_plasticity.analysis.hooks import kv_head
from circuit_plasticity.analysis.metrics import evaluate
from circuit_plasticity.tasks.encode import TaskBatch
from circuit_plasticity.tasks.tokenizer import TextTokenizer

SEQ_LEN = 10


def content_token_ids(batch: TaskBatch, tok: TextTokenizer) -> torch.Tensor:
    ids = torch.unique(batch.tokens)
    return ids[(ids != tok.pad_id) & (ids != (tok.bos_id if tok.bos_id is not None else -1))]


@torch.no_grad()
def head_profile(
    model, tok: TextTokenizer, batch: TaskBatch, thresholds: Thresholds | None = None
) -> tuple[pd.DataFrame, float]:
    """(per-head table with roles, the model's mean score on `batch`)."""
    score = float(evaluate(model, batch)["score"].mean())
    repeated = repeated_random_tokens(content_token_ids(batch, tok), 64, SEQ_LEN, tok.bos_id)
    tables = [
        direct_logit_attribution(model, batch),
        knockout_each_head(model, batch, group_means(model, batch)),
        sequence_scores(model, repeated, SEQ_LEN),
    ]
    tables.append(role_attention(model, batch))
    if batch.task == "ioi":
        names = torch.unique(torch.cat([batch.answer_id, batch.wrong_id]))
        tables.append(copy_scores(model, names))
    table = merge_head_tables(*tables)
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
