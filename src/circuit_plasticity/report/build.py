"""Collect every seed's outputs into tidy tables, draw the figures, write the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from circuit_plasticity.analysis import registry
from circuit_plasticity.compare.stats import t_interval
from circuit_plasticity.components import component_name
from circuit_plasticity.fileio import write_table
from circuit_plasticity.report import explain, figures
from circuit_plasticity.report.html import METRICS, Figure, Page, render_report

PER_SEED = {  # table name -> path inside a seed directory
    "metrics": "metrics.parquet",
    "tracking": "compare/tracking.parquet",
    "edge_tracking": "compare/edge_tracking.parquet",
    "edge_changes": "compare/edge_changes.parquet",
    "cmap": "compare/cmap.parquet",
    "recovery": "compare/recovery.parquet",
    "weights": "compare/weights.parquet",
    "amplification": "compare/amplification.parquet",
    "localization_heads": "compare/localization_heads.parquet",
}


def collect_tables(out: Path, seeds: list[int], csv: bool = False) -> None:
    """tables/<name>.parquet: each seed's table with a `seed` column (heads also get `phase`)."""
    for name, rel in PER_SEED.items():
        frames = [
            pd.read_parquet(p).assign(seed=s)
            for s in seeds
            if (p := out / "seeds" / f"seed-{s}" / rel).is_file()
        ]
        if frames:
            write_table(out / "tables" / f"{name}.parquet", pd.concat(frames, ignore_index=True), csv=csv)
    heads, circuits, curves, edges = [], [], [], []
    for s in seeds:
        for phase_dir in sorted((out / "seeds" / f"seed-{s}" / "analysis").glob("*")):
            heads.append(pd.read_parquet(phase_dir / "heads.parquet").assign(seed=s, phase=phase_dir.name))
            curves.append(
                pd.read_parquet(phase_dir / "faithfulness_curve.parquet").assign(seed=s, phase=phase_dir.name)
            )
            edges.append(pd.read_parquet(phase_dir / "edges.parquet").assign(seed=s, phase=phase_dir.name))
            c = json.loads((phase_dir / "circuit.json").read_text())
            circuits += [{**h, "seed": s, "phase": phase_dir.name} for h in c["heads"]]
    if heads:
        write_table(out / "tables" / "heads.parquet", pd.concat(heads, ignore_index=True), csv=csv)
        write_table(out / "tables" / "circuits.parquet", pd.DataFrame(circuits), csv=csv)
        write_table(
            out / "tables" / "faithfulness_curves.parquet", pd.concat(curves, ignore_index=True), csv=csv
        )
        write_table(out / "tables" / "edges.parquet", pd.concat(edges, ignore_index=True), csv=csv)


def _scores(out: Path, seeds: list[int]) -> pd.DataFrame:
    rows = []
    for phase in figures.PHASE_ORDER:
        values, accs = [], []
        for s in seeds:
            p = out / "seeds" / f"seed-{s}" / "analysis" / phase / "metrics.parquet"
            if p.is_file():
                m = pd.read_parquet(p).iloc[0]
                values.append(float(m["score"]))
                accs.append(float(m["correct"]))
        if values:
            mean, low, high, _ = t_interval(values)
            rows.append(
                {
                    "phase": phase,
                    "score": mean,
                    "ci_low": low,
                    "ci_high": high,
                    "accuracy": sum(accs) / len(accs),
                }
            )
    return pd.DataFrame(rows)


TASK_NAMES = {"ioi": "IOI", "greater-than": "Greater-Than"}
COUNTERFACTUAL = {"ioi": "ABC", "greater-than": '"01"'}


def _figure(title: str, caption: str, draw, *tables: pd.DataFrame | None, missing: str = "") -> Figure:
    """A Figure drawn from `tables`, or, when one is absent or holds nothing to draw, the
    sentence saying why there is none."""
    missing = missing or "No data for this figure: the analyses of this directory did not measure it."
    if any(t is None or t.empty for t in tables):
        return Figure(title, caption, missing=missing)
    png = draw(*tables)
    return Figure(title, caption, png=png) if png else Figure(title, caption, missing=missing)


def _read(tables: Path, name: str) -> pd.DataFrame | None:
    path = tables / f"{name}.parquet"
    return pd.read_parquet(path) if path.is_file() else None


def _study(out: Path, seeds: list[int], tables: Path, metric: str, thresholds) -> explain.Study:
    """What the verdicts' sentences read: findings, verdicts, each seed's findings.json and base
    circuit."""
    by_seed = {}
    for s in seeds:
        path = out / "seeds" / f"seed-{s}" / "compare" / "findings.json"
        if path.is_file():
            by_seed[s] = json.loads(path.read_text())
    circuits = _read(tables, "circuits")
    members = {}
    if circuits is not None and "phase" in circuits:
        base = circuits[circuits.phase == "base"]
        members = {int(s): list(g.component) for s, g in base.groupby("seed")}
    return explain.Study(
        _read(tables, "findings"),
        _read(tables, "verdicts"),
        by_seed,
        members,
        metric,
        thresholds,
        _read(tables, "verdict_criteria"),
    )


def _thresholds(provenance: dict | None):
    """The verdicts' thresholds as the spec set them (the defaults when it does not say)."""
    from circuit_plasticity.compare.verdicts import VerdictThresholds

    spec = (provenance or {}).get("spec", {})
    given = spec.get("experiment", {}).get("verdicts") or spec.get("options", {}).get("thresholds")
    try:
        return VerdictThresholds(**given) if given else VerdictThresholds()
    except TypeError:  # written by another version: bars unknown
        return None


EDGES_DRAWN = 10


def edge_change_figure(
    changes: pd.DataFrame | None, heads: pd.DataFrame | None, seed: int, circuits: dict | None = None
) -> Figure:
    """The edges that changed most per phase (one seed's edge_changes rows) on the circuit
    diagram's grid (its members in their role's colour), or the sentence saying why there are none."""
    title = f"Nodes or edges: the edges that changed most per phase (seed {seed})"
    mine = None if changes is None or "seed" not in changes else changes[changes.seed == seed]
    if mine is None or mine.empty or heads is None or heads.empty:
        return Figure(
            title,
            "",
            missing="No edge changes: the models were judged without their intermediate checkpoints.",
        )
    n_layers, n_heads = int(heads.layer.max()) + 1, int(heads["head"].max()) + 1
    drawn = int(mine.groupby("phase")["rank"].apply(lambda r: (r < EDGES_DRAWN).sum()).max())
    caption = (
        f"Per phase, the {drawn} edges whose EAP-IG score changed most between its final graph and "
        "its reference (clean: the base; poison, retrain and the control at the poison's steps: "
        "the clean model); red: the score rose, blue: it fell, width: |change|, one scale; letter "
        "at an arrow's end: the receiver's q/k/v input; faint colour: the phase's circuit, as above."
    )
    png = figures.edge_change_diagram(
        mine, n_layers, n_heads, mlps=bool((heads["head"] < 0).any()), top=EDGES_DRAWN, circuits=circuits
    )
    return Figure(title, caption, png=png)


def build_report(out: Path, summary: dict[str, str], seeds: list[int]) -> Path:
    from circuit_plasticity.study.provenance import FILE as PROVENANCE

    task = summary.get("task", "ioi")
    metric = METRICS.get(task, "score")
    tables = out / "tables"
    read = lambda name: _read(tables, name)  # noqa: E731
    heads = read("heads")
    first = out / "seeds" / f"seed-{seeds[0]}" / "analysis"
    circuits = {p.name: json.loads((p / "circuit.json").read_text()) for p in sorted(first.glob("*"))}
    members = {component_name((h["layer"], h["head"])) for h in circuits.get("base", {}).get("heads", [])}
    figs = [
        _figure(
            "Metrics through all phases",
            f"Held-out clean {metric} and accuracy, poison success and general-text loss; solid: "
            "clean -> poisoned -> retrain, dashed: the clean-only control branch; one line per seed.",
            figures.metric_curves,
            read("metrics"),
            missing="No training metrics: the models were judged as given (judge), not trained here.",
        )
    ]
    figs += [
        _figure(f.title, f.caption, lambda h, m=f.measure: figures.head_heatmaps(h, m), heads)
        for f in registry.figures(task)
    ]
    figs.append(
        _figure(
            "Path patching: direct effect on the logits",
            "Score change (share of the model's score) when only "
            f"the head -> logits path sees the {COUNTERFACTUAL.get(task, 'corrupted')} prompt.",
            lambda h: figures.head_heatmaps(h, "path_logits"),
            heads,
        )
    )
    if heads is not None and circuits:
        n_layers, n_heads = int(heads.layer.max()) + 1, int(heads["head"].max()) + 1
        mlps = bool((heads["head"] < 0).any())
        figs.append(
            Figure(
                f"Circuits per phase (seed {seeds[0]})",
                "Each phase's circuit on the layer x head grid. Colour: role (squares: MLPs); "
                "grey: not in the circuit. Arrows: the circuit's edges, sender -> receiver. Black "
                "ring: in this phase's circuit but not the base's; hollow ring: a base member that left.",
                png=figures.circuit_diagram(circuits, n_layers, n_heads, mlps=mlps),
            )
        )
    else:
        figs.append(Figure("Circuits per phase", "", missing="No per-phase analyses in this directory."))
    figs.append(
        _figure(
            "Cross-model activation patching",
            "Share of each model's gap to the base explained by patching one "
            "head's output from it into the base.",
            figures.cmap_maps,
            read("cmap"),
        )
    )
    figs.append(
        _figure(
            "Where the poison lives, and what carries it",
            "Per component, the clean model's score change (mean over seeds, the held-out half) with "
            "one component taken from the poisoned model: its weights (origin: where the change "
            "lives; embeddings and norms are components too), its output (carrier: every upstream "
            "change that flows into it) and, for heads, its attention pattern (the paper's evidence). "
            "Grey: the same for the control fine-tune of the poison's length.",
            figures.localization_views,
            read("localization_heads"),
            missing="No per-component localization table: the phases were judged without the full analysis.",
        )
    )
    figs.append(
        _figure(
            "Recovery after retraining",
            "1 - |retrained - clean| / |poisoned - clean| of each head's DLA (the poison phase "
            "starts from the clean fine-tune).",
            lambda r: figures.recovery_bars(r, members),
            read("recovery"),
        )
    )
    figs.append(
        _figure(
            "Edge attribution circuits: faithfulness against size",
            "EAP-IG edge scores; circuits of the n best edges at MIB's sizes, the rest of the "
            "graph patched edge by edge with the corrupted run; mean over seeds.",
            figures.faithfulness_curves,
            read("faithfulness_curves"),
            missing="No edge-attribution curves: the phases were analysed without EAP-IG.",
        )
    )
    figs.append(
        _figure(
            "The base circuit through training",
            "Faithfulness of each seed's base circuit and its members' direct effects at every "
            "checkpoint; colour: component, line style: seed.",
            figures.tracking_curves,
            read("tracking"),
            missing="No tracking: the models were judged without their intermediate checkpoints.",
        )
    )
    figs.append(
        _figure(
            "Nodes or edges: the circuit's overlap with its reference through training",
            "EAP-IG graph at tracked checkpoints; Jaccard of the top 5 % of edges (right) and of "
            "the components they touch (left) with the reference (clean fine-tune: the base; "
            "poison, retrain and control: the clean model); control dashed, at its own steps from "
            "the clean model. " + explain.nodes_or_edges(read("findings")),
            figures.edge_tracking_curves,
            read("edge_tracking"),
            missing="No edge tracking: the models were judged without their intermediate checkpoints.",
        )
    )
    figs.append(edge_change_figure(read("edge_changes"), heads, seeds[0], circuits))
    provenance_path = out / PROVENANCE
    provenance = json.loads(provenance_path.read_text()) if provenance_path.is_file() else None
    verdicts = read("verdicts")
    study = _study(out, seeds, tables, metric, _thresholds(provenance))
    model = summary.get("model") or next(
        (m["model"] for m in (provenance or {}).get("models", []) if m.get("phase") == "base"), ""
    )
    page = Page(
        title=f"circuit-plasticity: {model or 'models judged'} on {TASK_NAMES.get(task, task)}",
        summary=summary,
        verdicts=verdicts,
        findings=read("findings"),
        scores=_scores(out, seeds),
        figures=figs,
        explanations=explain.explain(study),
        rules=dict(zip(verdicts.finding, verdicts.rule, strict=True)),
        provenance=provenance,
        tables=sorted(p.name for p in tables.glob("*.parquet")),
    )
    return render_report(out, page)
