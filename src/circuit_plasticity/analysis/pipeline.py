"""The whole single-model analysis in one call: what `analyze` writes and the study reuses.

Two depths. `fast`: metrics, the head profile, EAP-IG over every edge, and the circuit found by
EAP-IG (the smallest MIB-size top-n edge circuit keeping at least 80 % of the model's
behaviour under edge patching), verified by mean-ablating every head outside it. `full` adds
Wang-style path-patching discovery (that circuit is then the reported one) and the MLPs' path
effects. Every step works in prompt chunks under a memory budget (`memory_budget_bytes`;
default a quarter of the free memory, at most 1 GiB); the cost estimate is printed first when
`progress` is on. The steps that batch 16 copies of every prompt and take the whole batch at
once (the head profile, path-patching discovery, the node-level circuit check) run on the first
chunk of prompts only when the prompts do not fit in one (the plan says so); metrics, EAP-IG,
the edge-patched curve and the MLP effects use every prompt.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from circuit_plasticity.analysis import registry, runs
from circuit_plasticity.analysis.attribution import (
    check_edge_graph,
    edge_attribution,
    faithfulness_curve,
    plan,
)
from circuit_plasticity.analysis.circuit import Circuit, CircuitHead, Edge
from circuit_plasticity.analysis.classes import QUERY_PATH, Thresholds, classify_heads, with_query_path
from circuit_plasticity.analysis.discovery import DiscoveryConfig, discover_circuit
from circuit_plasticity.analysis.faithfulness import CircuitScores, evaluate_circuit
from circuit_plasticity.analysis.graph import Graph
from circuit_plasticity.analysis.metrics import by_group, evaluate, summarize
from circuit_plasticity.analysis.mib import mib_curves
from circuit_plasticity.analysis.profile import head_profile
from circuit_plasticity.analysis.runs import sharing_runs
from circuit_plasticity.analysis.tables import long_table
from circuit_plasticity.components import Component
from circuit_plasticity.errors import Unsupported, UserError
from circuit_plasticity.fileio import write_table
from circuit_plasticity.models.load import LoadedModel
from circuit_plasticity.models.ungroup import ungrouped_twin
from circuit_plasticity.tasks.encode import TaskBatch

IG_STEPS = 5
DEPTHS = ("fast", "full")
FOUND_AT = 0.8  # EAP-IG circuit: smallest MIB size whose edge-patching faithfulness reaches this
COPIES = 16  # prompts are repeated this many times by batched head patching (knockouts)


@dataclass
class ModelAnalysis:
    metrics: dict[str, float]
    by_template: pd.DataFrame  # the same metrics per template (IOI) with bootstrap CIs
    heads: pd.DataFrame  # wide: one row per head, with roles
    path_effects: pd.DataFrame  # long: layer, head, measure, value
    circuit: Circuit
    scores: CircuitScores
    edges: pd.DataFrame  # EAP-IG score of every edge (edge, sender, receiver, input, score)
    curve: pd.DataFrame  # faithfulness of top-n (/ greedy) edge circuits at MIB sizes

    mlps: pd.DataFrame  # layer, head=-1, dla: each MLP's direct effect (empty without MLPs)
    graph: Graph | None = None  # EAP-IG scores; in_graph = the EAP-IG circuit (per query head)
    edge_summary: pd.DataFrame = field(default_factory=pd.DataFrame)  # CPR and CMD per method
    mib_curve: pd.DataFrame = field(default_factory=pd.DataFrame)  # MIB's own evaluation (analysis/mib.py)
    depth: str = "full"

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
        write_table(out / "edge_circuit_scores.parquet", self.edge_summary, csv=csv)
        if len(self.mib_curve):
            write_table(out / "mib_curve.parquet", self.mib_curve, csv=csv)
        self.circuit.save(out / "circuit.json")
        if self.graph is not None:
            self.graph.to_json(out / "edge_circuit.json")  # EAP-IG / MIB format


@sharing_runs
def analyze_model(
    loaded: LoadedModel,
    batch: TaskBatch,
    thresholds: Thresholds | None = None,
    discovery: DiscoveryConfig | None = None,
    *,
    depth: str = "full",
    memory_budget_bytes: int | None = None,
    progress: bool = False,
    ig_steps: int = IG_STEPS,
    minimality_steps: int | None = None,
    greedy_curve: bool = True,
    mib: bool = True,
) -> ModelAnalysis:
    """Everything about one model on one task batch (the `analyze` command).

    `minimality_steps` greedy rounds of the minimality search (default: 2 at full depth, 0 at
    fast depth, where an EAP-IG circuit of |C| components would cost ~|C|^2 ablated passes per
    round). The study passes 0 (K = {} and the role class only) and `greedy_curve=False` (top-n
    edge circuits only): its verdicts read neither, and it analyses fifteen models. `mib`:
    also MIB's own evaluation of the scores in both its modes (analysis/mib.py; about twice
    the cost of our curve), which the study skips too."""
    if depth not in DEPTHS:
        raise UserError(f"depth must be one of {', '.join(DEPTHS)}; got {depth!r}")
    model = loaded.model
    edge_model, unsupported = _edge_model(loaded, depth)
    eap_plan = plan(
        model,
        batch,
        f"EAP-IG ({ig_steps} steps)",
        f"2 forward + {ig_steps} forward/backward",
        memory_budget_bytes,
    )
    flat = plan(model, batch, "forward passes", "1 forward", memory_budget_bytes, grad=False)
    copies = plan(model, batch, "", "", memory_budget_bytes, grad=False, store=False, copies=COPIES)
    whole = copies.chunk  # knockouts and path patching repeat each prompt COPIES times
    first = batch if len(batch) <= whole else batch.subset(slice(0, whole))
    if progress:
        say = [eap_plan.describe(), flat.describe().replace("forward passes", "edge patching, metrics")]
        if len(first) < len(batch):
            steps = "head profile, node-level circuit check"
            steps += ", path-patching discovery" if depth == "full" else ""
            say.append(f"{steps}: first {len(first)} prompts (they batch {COPIES} copies of each)")
        print("\n".join(f"[{depth}] {line}" for line in say), file=sys.stderr)

    per_prompt = evaluate(model, batch, chunk=flat.chunk)
    metrics = summarize(per_prompt, batch)
    templates = pd.DataFrame(by_group(per_prompt, batch)).rename(columns={"group": "template"})
    heads, score = head_profile(model, loaded.tokenizer, first, thresholds)
    if edge_model is None:
        print(f"note: EAP-IG edges and curves skipped: {unsupported}", file=sys.stderr)
        graph, curve, summary, mib_curve = None, pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    else:
        graph = edge_attribution(
            edge_model, batch, ig_steps=ig_steps, memory_budget_bytes=memory_budget_bytes, progress=progress
        )
        methods = ("top_n",) if depth == "fast" or not greedy_curve else ("top_n", "greedy")
        curve, summary = faithfulness_curve(
            edge_model,
            batch,
            graph,
            methods=methods,
            memory_budget_bytes=memory_budget_bytes,
            progress=progress,
        )
        graph.in_graph = _found_mask(graph, curve)
        mib_curve = pd.DataFrame()
        if mib:
            mib_curve, mib_summary = mib_curves(edge_model, batch, graph, memory_budget_bytes)
            summary = pd.concat([summary, mib_summary], ignore_index=True)
    runs.forget(edge_model)  # the ungrouped twin (a copy of the weights) is done with
    del edge_model
    mlps = _chunked_mean(
        lambda sub: registry.run("mlp_dla", model, sub).frame, batch, flat.chunk, ["layer", "head"]
    )
    if depth == "fast":
        circuit = _eap_circuit(
            graph, heads, loaded.name, float(per_prompt["score"].mean()), curve, batch.task
        )
        effects = pd.DataFrame({"layer": [], "head": [], "measure": [], "value": []})
    else:
        records = {(int(r["layer"]), int(r["head"])): r for r in heads.to_dict("records")}
        config = discovery or DiscoveryConfig()
        found = discover_circuit(model, first, loaded.name, config, records)
        circuit, effects = found.circuit, found.effects
        # one taxonomy: the table's S-inhibition is the circuit's (path through the movers' queries)
        heads = classify_heads(
            with_query_path(heads, found.effects),
            score,
            thresholds or Thresholds(),
            reference_scale=config.reference_scale,
        ).drop(columns=QUERY_PATH)
    steps = minimality_steps if minimality_steps is not None else (0 if depth == "fast" else 2)
    scores = evaluate_circuit(model, first, circuit, minimality_steps=steps)
    return ModelAnalysis(
        metrics,
        templates,
        heads,
        effects,
        circuit,
        scores,
        graph.edge_table() if graph is not None else pd.DataFrame(),
        curve,
        mlps,
        graph,
        summary,
        mib_curve,
        depth,
    )


def _edge_model(loaded: LoadedModel, depth: str):
    """(the model EAP-IG runs on, None) - the ungrouped twin under grouped-query attention, so
    that k/v receivers are per query head - or (None, why) where edge attribution cannot split
    the model; checked before any work, and fatal only for the depth that needs it."""
    try:
        edge_model = ungrouped_twin(loaded).model
        check_edge_graph(edge_model)
        return edge_model, None
    except Unsupported as why:
        if depth == "fast":
            raise UserError(f"depth fast finds the circuit with EAP-IG: {why}; use --depth full") from None
        return None, str(why)


def _chunks(batch: TaskBatch, size: int):
    for start in range(0, len(batch), size):
        yield batch.subset(slice(start, start + size))


def _chunked_mean(fn, batch: TaskBatch, size: int, keys: list[str]) -> pd.DataFrame:
    """fn(chunk) -> a table of per-prompt means; the prompt-weighted mean over chunks."""
    if len(batch) <= size:
        return fn(batch)
    parts = [fn(sub).assign(_n=len(sub)) for sub in _chunks(batch, size)]
    table = pd.concat(parts, ignore_index=True)
    numeric = [
        c for c in table.columns if c not in keys and c != "_n" and pd.api.types.is_numeric_dtype(table[c])
    ]
    weighted = table[numeric].mul(table["_n"], axis=0).assign(**{k: table[k] for k in keys}, _n=table["_n"])
    summed = weighted.groupby(keys, sort=True).sum()
    return summed[numeric].div(summed["_n"], axis=0).reset_index()


def _found_mask(graph: Graph, curve: pd.DataFrame) -> torch.Tensor:
    """The EAP-IG circuit: the smallest top-n size with faithfulness >= FOUND_AT (else the best)."""
    top = curve[curve.method == "top_n"]
    good = top[top.faithfulness >= FOUND_AT]
    row = good.iloc[0] if len(good) else top.loc[top.faithfulness.idxmax()]
    return graph.top_n(int(row.edges))


def _eap_circuit(
    graph: Graph, heads: pd.DataFrame, name: str, model_score: float, curve: pd.DataFrame, task: str
) -> Circuit:
    """Heads, MLPs (layer, -1) and their edges in the EAP-IG circuit; a component's effect is
    the summed score of its outgoing circuit edges over the model's score, a head's role the
    first from the head profile, an MLP's "mlp"."""
    selected = graph.in_graph
    mask, _ = graph.pruned(selected)  # EAP-IG's pruning: members lie on a path to the logits
    roles = {
        (int(r.layer), int(r.head)): (r.roles.split(",")[0] if r.roles else "") for r in heads.itertuples()
    }
    scale = max(abs(model_score), 1e-6)
    members, edges = [], []
    inside = graph.nodes_in_graph(mask)
    for f, fname in enumerate(graph.forward_names):
        if fname == "input" or not inside[fname]:
            continue
        part = Component.parse(fname)
        effect = float((graph.scores[f] * mask[f]).sum()) / scale
        role = "mlp" if part[1] < 0 else roles.get(part) or "eap_ig"
        members.append(CircuitHead(part[0], part[1], role, "all", effect))
        for b in mask[f].nonzero().flatten().tolist():
            slot = graph.backward_names[b]
            if slot == "logits":
                edges.append(Edge(part, "logits", "logits"))
            elif slot.startswith("a"):
                node, kind = slot[:-1].split("<")
                edges.append(Edge(part, Component.parse(node), kind))
            else:
                edges.append(Edge(part, Component.parse(slot), "mlp"))
    found = curve[(curve.method == "top_n") & (curve.edges == int(selected.sum()))].iloc[0]
    meta = {
        "method": "eap-ig",
        "edges": int(selected.sum()),
        "edges_after_pruning": int(mask.sum()),
        "percent": float(found.percent),
        "edge_faithfulness": float(found.faithfulness),
    }
    return Circuit(task, name, members, edges, graph.n_layers * graph.n_heads, meta)


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
