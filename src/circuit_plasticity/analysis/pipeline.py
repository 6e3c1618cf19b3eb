"""The whole single-model analysis in one call: what `analyze` writes and the study reuses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from circuit_plasticity.analysis.attribution import edge_attribution, faithfulness_curve
from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.analysis.classes import QUERY_PATH, Thresholds, classify_heads, with_query_path
from circuit_plasticity.analysis.discovery import DiscoveryConfig, discover_circuit
from circuit_plasticity.analysis.faithfulness import CircuitScores, evaluate_circuit
from circuit_plasticity.analysis.heads import mlp_dla
from circuit_plasticity.analysis.metrics import by_group, evaluate, summarize
from circuit_plasticity.analysis.patching import Receivers, mlp_labels, path_patch
from circuit_plasticity.analysis.profile import head_profile
from circuit_plasticity.analysis.tables import long_table, write_table
from circuit_plasticity.errors import UserError
from circuit_plasticity.models.load import LoadedModel
from circuit_plasticity.tasks.encode import TaskBatch

IG_STEPS = 5
CURVE_SIZES = [1, 2, 4, 8, 16, 32, 64, 128]


@dataclass
class ModelAnalysis:
    metrics: dict[str, float]
    by_template: pd.DataFrame  # the same metrics per template (IOI) with bootstrap CIs
    heads: pd.DataFrame  # wide: one row per head, with roles
    path_effects: pd.DataFrame  # long: layer, head, measure, value
    circuit: Circuit
    scores: CircuitScores
    edges: pd.DataFrame  # EAP-IG score of every edge
    curve: pd.DataFrame  # faithfulness of top-n / greedy edge circuits by size

    mlps: pd.DataFrame  # layer, head=-1, dla: each MLP's direct effect (empty without MLPs)

    def head_long(self) -> pd.DataFrame:
        wide = long_table(self.heads, id_cols=["layer", "head", "roles"])
        parts = [wide, self.path_effects.assign(roles="")]
        if len(self.mlps):
            parts.append(long_table(self.mlps.assign(roles="mlp"), id_cols=["layer", "head", "roles"]))
        return pd.concat(parts, ignore_index=True)

    def write(self, out: str | Path, csv: bool = False) -> None:
        out = Path(out)
        write_table(out / "heads.parquet", self.head_long(), csv=csv)
        write_table(out / "metrics.parquet", pd.DataFrame([self.metrics]), csv=csv)
        write_table(out / "metrics_by_template.parquet", self.by_template, csv=csv)
        write_table(out / "circuit_scores.parquet", pd.DataFrame([self.scores.as_row()]), csv=csv)
        write_table(out / "edges.parquet", self.edges, csv=csv)
        write_table(out / "faithfulness_curve.parquet", self.curve, csv=csv)
        self.circuit.save(out / "circuit.json")


def analyze_model(
    loaded: LoadedModel,
    batch: TaskBatch,
    thresholds: Thresholds | None = None,
    discovery: DiscoveryConfig | None = None,
) -> ModelAnalysis:
    if batch.task != "ioi":
        raise UserError(
            f"circuit analysis is implemented for IOI; {batch.task} has datasets, training and "
            "evaluation (`eval --task greater-than`) but no head roles or discovery yet"
        )
    per_prompt = evaluate(loaded.model, batch)
    metrics = summarize(per_prompt, batch)
    templates = pd.DataFrame(by_group(per_prompt, batch)).rename(columns={"group": "template"})
    heads, score = head_profile(loaded.model, loaded.tokenizer, batch, thresholds)
    records = {(int(r["layer"]), int(r["head"])): r for r in heads.to_dict("records")}
    config = discovery or DiscoveryConfig()
    found = discover_circuit(loaded.model, batch, loaded.name, config, records)
    # one taxonomy: the table's S-inhibition is the circuit's (path through the movers' queries)
    heads = classify_heads(
        with_query_path(heads, found.effects),
        score,
        thresholds or Thresholds(),
        reference_scale=config.reference_scale,
    ).drop(columns=QUERY_PATH)
    scores = evaluate_circuit(loaded.model, batch, found.circuit)
    edges = edge_attribution(loaded.model, batch, ig_steps=IG_STEPS)
    curve = faithfulness_curve(loaded.model, batch, edges, CURVE_SIZES)
    mlps = mlp_dla(loaded.model, batch)
    effects = found.effects
    if mlp_labels(loaded.model):
        mlp_paths = _mlp_direct_paths(loaded.model, batch, per_prompt["score"])
        effects = pd.concat([effects, mlp_paths], ignore_index=True)
    return ModelAnalysis(metrics, templates, heads, effects, found.circuit, scores, edges, curve, mlps)


def _mlp_direct_paths(model, batch: TaskBatch, clean: torch.Tensor) -> pd.DataFrame:
    """Each MLP's path-patching effect on the logits (share of the score), rows with head = -1;
    `clean` is the per-prompt score the analysis already has."""
    senders = mlp_labels(model)
    scale = max(abs(float(clean.mean())), 1e-6)
    effects = (path_patch(model, batch, Receivers(), senders) - clean[None].to(batch.device)).mean(1) / scale
    return pd.DataFrame(
        {
            "layer": [lay for lay, _ in senders],
            "head": -1,
            "measure": "path_logits",
            "value": effects.tolist(),
        }
    )


def circuit_of(
    loaded: LoadedModel,
    batch: TaskBatch,
    thresholds: Thresholds | None = None,
    discovery: DiscoveryConfig | None = None,
) -> Circuit:
    """Only the discovered circuit (the head profile discovery needs, no edges or curves): what
    a verdict needs when no report is drawn."""
    heads, _ = head_profile(loaded.model, loaded.tokenizer, batch, thresholds)
    records = {(int(r["layer"]), int(r["head"])): r for r in heads.to_dict("records")}
    return discover_circuit(loaded.model, batch, loaded.name, discovery or DiscoveryConfig(), records).circuit
