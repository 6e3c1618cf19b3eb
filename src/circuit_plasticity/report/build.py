"""Collect every seed's outputs into tidy tables, draw the figures, write the HTML report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from circuit_plasticity.analysis import registry
from circuit_plasticity.compare.stats import t_interval
from circuit_plasticity.components import component_name
from circuit_plasticity.fileio import write_table
from circuit_plasticity.report import figures
from circuit_plasticity.report.html import METRICS, render_report

PER_SEED = {  # table name -> path inside a seed directory
    "metrics": "metrics.parquet",
    "tracking": "compare/tracking.parquet",
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


COUNTERFACTUAL = {"ioi": "ABC", "greater-than": '"01"'}


def build_report(out: Path, summary: dict[str, str], seeds: list[int]) -> Path:
    task = summary.get("task", "ioi")
    tables = out / "tables"
    read = lambda name: pd.read_parquet(tables / f"{name}.parquet")  # noqa: E731
    heads = read("heads")
    first = out / "seeds" / f"seed-{seeds[0]}" / "analysis"
    circuits = {p.name: json.loads((p / "circuit.json").read_text()) for p in sorted(first.glob("*"))}
    n_layers = int(heads.layer.max()) + 1
    n_heads = int(heads["head"].max()) + 1
    members = {component_name((h["layer"], h["head"])) for h in circuits.get("base", {}).get("heads", [])}
    figs = []
    if (tables / "metrics.parquet").is_file():
        figs.append(
            (
                "Metrics through all phases",
                f"Held-out clean {METRICS[task]} and accuracy, poison success and general-text "
                "loss; solid: clean -> poisoned -> retrain, dashed: the clean-only control branch.",
                figures.metric_curves(read("metrics")),
            )
        )
    figs += [(f.title, f.caption, figures.head_heatmaps(heads, f.measure)) for f in registry.figures(task)]
    figs += [
        (
            "Path patching: direct effect on the logits",
            "Score change (share of the model's score) when only "
            f"the head -> logits path sees the {COUNTERFACTUAL[task]} prompt.",
            figures.head_heatmaps(heads, "path_logits"),
        ),
        (
            f"Circuits per phase (seed {seeds[0]})",
            "Colour: role (squares: MLPs). Ringed: in this phase's circuit but "
            "not the base's; hollow ring: a base component that left.",
            figures.circuit_diagram(circuits, n_layers, n_heads, mlps=bool((heads["head"] < 0).any())),
        ),
        (
            "Cross-model activation patching",
            "Share of each model's gap to the base explained by patching one "
            "head's output from it into the base.",
            figures.cmap_maps(read("cmap")),
        ),
    ]
    if (tables / "recovery.parquet").is_file():
        figs.append(
            (
                "Recovery after retraining",
                "1 - |retrained - clean| / |poisoned - clean| of each head's DLA (the poison phase "
                "starts from the clean fine-tune).",
                figures.recovery_bars(read("recovery"), members),
            )
        )
    curves = read("faithfulness_curves") if (tables / "faithfulness_curves.parquet").is_file() else None
    if curves is not None and len(curves):
        figs.append(
            (
                "Edge attribution circuits: faithfulness against size",
                "EAP-IG edge scores; circuits of the n best edges at MIB's sizes, the rest of the "
                "graph patched edge by edge with the corrupted run; mean over seeds.",
                figures.faithfulness_curves(curves),
            )
        )
    if (tables / "tracking.parquet").is_file():
        figs.append(
            (
                "The base circuit through training",
                "Faithfulness of the base model's circuit and "
                "its members' direct effects at every checkpoint.",
                figures.tracking_curves(read("tracking")),
            )
        )
    return render_report(
        out,
        f"circuit-plasticity: {summary.get('model', '')} on {summary.get('task', '')}",
        summary,
        read("verdicts"),
        read("findings"),
        _scores(out, seeds),
        figs,
    )
