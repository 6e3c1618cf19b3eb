"""The study's per-seed extras beside the verdict evidence: the per-head tables the report draws
(cross-model patching, weight change, recovery, amplification, localization), the scalar
findings (scores, accuracies, circuit overlaps, hysteresis) and the tracked circuit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.analysis.tables import long_table
from circuit_plasticity.compare.changes import amplification, circuit_overlap, recovery
from circuit_plasticity.compare.cmap import cross_model_patch
from circuit_plasticity.compare.tracking import circuit_strength, hysteresis
from circuit_plasticity.compare.weights import weight_change
from circuit_plasticity.components import Component
from circuit_plasticity.fileio import read_table_or_none, write_table
from circuit_plasticity.training.loop import RunDir

STUDY_PHASES = ("base", "clean", "poisoned", "retrain", "control")
WIDE_MEASURES = ["dla", "attn_end_io", "attn_end_s2", "attn_end_yy", "knockout_effect"]
RECOVERY_MEASURES = ("dla", "attn_end_io", "attn_end_s2", "attn_end_yy")  # those the task has


def phase_checkpoints(run: RunDir, base_model: str) -> dict[str, str]:
    """Final weights of each finished phase (and the base model spec), in study order."""
    out = {"base": base_model}
    for phase in STUDY_PHASES[1:]:
        final = run.final_checkpoint(phase)
        if final is not None:
            out[phase] = str(final)
    return out


def matched_control(run: RunDir) -> str | None:
    """The control branch's checkpoint at the poison phase's number of steps (the control the
    localization verdict holds the poison against), when the run kept one and it is not the
    control's final checkpoint; else None (the final control stands in, and the tables say so)."""
    poisoned, control = run.final_checkpoint("poisoned"), run.final_checkpoint("control")
    if poisoned is None or control is None:
        return None
    candidate = run.phase_dir("control") / poisoned.name
    if candidate == control or not (candidate / "config.json").is_file():
        return None
    return str(candidate)


def all_checkpoints(run: RunDir) -> list[tuple[str, int, Path]]:
    rows = []
    for phase_dir in sorted((run.root / "phases").glob("*")):
        for ckpt in sorted(phase_dir.glob("step-*")):
            rows.append((phase_dir.name, int(ckpt.name.split("-")[1]), ckpt))
    return rows


def _cached(path: Path, make: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """The table at `path`, made and written if absent or in the wide format of older runs."""
    frame = read_table_or_none(path)  # a damaged table is named and made again
    if frame is not None and "value" in frame.columns:
        return frame
    frame = make()
    write_table(path, frame)
    return frame


def _wide(heads: pd.DataFrame) -> pd.DataFrame:
    """Heads and MLPs (head -1: their DLA) with the per-head measures as columns."""
    rows = heads[heads.measure.isin(WIDE_MEASURES)]
    return rows.pivot_table(index=["layer", "head"], columns="measure", values="value").reset_index()


def _place(name: str) -> tuple[int, int]:
    """(layer, head) of a component name; (-1, -2) for parts that are no circuit component
    (embed, norms, ...; analysis/parameters.py)."""
    try:
        return tuple(Component.parse(name))
    except ValueError:
        return (-1, -2)


def per_head_tables(loaded: dict, runs, evidence, out_dir: Path) -> None:
    """cmap, weights, localization_heads: what the report's per-component figures read.

    localization_heads: per component and change (poisoned, control), the mean single-component
    effect on the measuring half of the prompts in each view: origin (its weights taken from
    the changed model), carrier (its output); and the paper's pattern view (the head's attention
    pattern from the poisoned model, every prompt)."""
    from circuit_plasticity.compare.localization import pattern_effects

    model_tables(loaded, runs.batch, out_dir)
    views = {v: dict(changes) for v, changes in evidence.localization.per_component.items()}
    names, pattern = pattern_effects(runs)
    views["pattern"] = {"poisoned": (names, pattern.mean(1))}
    rows = [
        {
            "component": name,
            "layer": _place(name)[0],
            "head": _place(name)[1],
            "change": change,
            "view": view,
            "measure": "effect",
            "value": float(value),
        }
        for view, changes in views.items()
        for change, (names, values) in changes.items()
        for name, value in zip(names, values, strict=True)
    ]
    write_table(out_dir / "localization_heads.parquet", pd.DataFrame(rows))


def model_tables(loaded: dict, batch, out_dir: Path) -> None:
    """Cross-model patching and weight change of every phase against the base (cached): they
    need no verdict evidence, so the study computes them beside it."""
    base = loaded["base"].model
    others = [p for p in loaded if p != "base"]
    _cached(
        out_dir / "cmap.parquet",
        lambda: long_table(
            pd.concat(
                [cross_model_patch(loaded[p].model, base, batch, "output").assign(source=p) for p in others]
                + [
                    cross_model_patch(loaded[p].model, base, batch, "pattern", ("end",)).assign(source=p)
                    for p in others
                ],
                ignore_index=True,
            ),
            ["layer", "head", "position", "activation", "source"],
        ),
    )
    _cached(
        out_dir / "weights.parquet",
        lambda: long_table(
            pd.concat(
                [weight_change(loaded[p].model, base).assign(source=p) for p in others], ignore_index=True
            ),
            ["component", "layer", "head", "source"],
        ),
    )


def scalar_findings(seed_models, loaded, runs, circuits, loc, seed_dir: Path, options) -> dict[str, Any]:
    """Scores, accuracies, overlaps, weight concentration, hysteresis; tracking as a table."""
    out: dict[str, Any] = {}
    for phase, scores in runs.scores.items():
        s = scores.detach().cpu().numpy()
        out[f"score_{phase}"] = float(s.mean())
        out[f"accuracy_{phase}"] = float((s > 0).mean())
    analysis = seed_dir / "analysis"
    heads = {
        p: pd.read_parquet(analysis / p / "heads.parquet")
        for p in loaded
        if (analysis / p / "heads.parquet").is_file()
    }
    compare = seed_dir / "compare"
    if {"base", "clean"} <= set(heads):
        table, amp = amplification(
            _wide(heads["base"]), _wide(heads["clean"]), circuits["base"], circuits["clean"]
        )
        table = table.rename(columns={"dla_before": "before", "dla_after": "after"})
        write_table(
            compare / "amplification.parquet",
            long_table(table, ["layer", "head", "in_base_circuit"], of="measure"),
        )
        out["amplification_members_grown"] = amp["members_grown"] / max(amp["circuit_members"], 1)
        out["amplification_node_jaccard"] = circuit_overlap(circuits["base"], circuits["clean"])[
            "node_jaccard"
        ]
    if {"clean", "poisoned", "retrain"} <= set(heads):
        _cached(
            compare / "recovery.parquet",
            lambda: long_table(
                pd.concat(
                    [
                        recovery(_wide(heads["clean"]), _wide(heads["poisoned"]), _wide(heads["retrain"]), m)
                        for m in RECOVERY_MEASURES
                        if m in _wide(heads["clean"]).columns
                    ],
                    ignore_index=True,
                ),
                ["layer", "head"],
                of="measure",
            ),
        )
    if "retrain" in circuits:
        overlap = circuit_overlap(circuits["base"], circuits["retrain"])
        out["neuroplasticity_node_jaccard"] = overlap["node_jaccard"]
        out["neuroplasticity_edge_jaccard"] = overlap["edge_jaccard"]
    out["localization_top_in_base_circuit"] = float(
        np.mean([h in circuits["base"].head_set() for h in loc.top])
    )
    weights = weight_change(loaded["poisoned"].model, loaded["clean"].model)
    w = weights[weights["head"] >= 0].weight_change_rel.sort_values(ascending=False)  # heads only
    if w.sum() > 0:
        out["localization_weight_share_topk"] = float(w.head(options.k).sum() / w.sum())
        out["localization_uniform_weight_share"] = options.k / len(w)
    track_checkpoints(seed_models, loaded["base"], runs.batch, circuits["base"], compare)
    from circuit_plasticity.study.edge_tracking import edge_findings, track_edges

    every = getattr(options, "edge_tracking_every", 0)
    out |= edge_findings(track_edges(seed_models, loaded["base"], runs.batch, compare, every))
    metrics = seed_models.training_metrics
    if (metrics is None or not len(metrics)) and (compare / "tracking.parquet").is_file():
        metrics = tracked_metrics(pd.read_parquet(compare / "tracking.parquet"))
        if not (seed_dir / "metrics.parquet").is_file():  # the report's training curves
            write_table(seed_dir / "metrics.parquet", metrics)
    if metrics is not None and len(metrics):
        out |= {f"hysteresis_{k}": v for k, v in hysteresis(metrics).items()}
    return out


def tracked_metrics(tracking: pd.DataFrame) -> pd.DataFrame:
    """Training curves of checkpoints trained elsewhere, from the tracking table: the score on
    the judge's held-out prompts at every checkpoint (what `run` logs as clean_score)."""
    from circuit_plasticity.study.judge import PARENTS

    rows = tracking[(tracking.component == "circuit") & (tracking.measure == "score")]
    table = rows[["phase", "step", "value"]].rename(columns={"value": "clean_score"}).copy()
    table["parent"] = table.phase.map(PARENTS).fillna("")
    return table.sort_values(["phase", "step"], kind="stable").reset_index(drop=True)


def _track(checkpoints, base, batch, circuit: Circuit) -> pd.DataFrame:
    """`circuit_strength`'s long rows at every checkpoint, with its phase and step."""
    from circuit_plasticity.models.load import load_model

    rows = [{"phase": "base", "step": 0, **r} for r in circuit_strength(base.model, batch, circuit)]
    for phase, step, ckpt in checkpoints:
        model = load_model(str(ckpt)).model
        rows += [{"phase": phase, "step": step, **r} for r in circuit_strength(model, batch, circuit)]
    return pd.DataFrame(rows)


def track_checkpoints(seed_models, base, batch, circuit: Circuit, compare: Path) -> None:
    """The base circuit at every checkpoint of the seed's training (cached)."""
    if seed_models.checkpoints:
        _cached(compare / "tracking.parquet", lambda: _track(seed_models.checkpoints, base, batch, circuit))
