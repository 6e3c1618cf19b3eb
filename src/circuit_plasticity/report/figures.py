"""Figures of the study, each a function from tidy tables to a PNG (bytes)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from circuit_plasticity.analysis.circuit import Circuit

ROLE_COLORS = {
    "name_mover": "#1f77b4",
    "negative_name_mover": "#d62728",
    "s_suppressor": "#9467bd",
    "s_inhibition": "#2ca02c",
    "induction": "#ff7f0e",
    "duplicate_token": "#8c564b",
    "previous_token": "#e377c2",
    "direct_effect": "#17becf",
    "backup_name_mover": "#bcbd22",
    "year_reader": "#393b79",
    "year_encoder": "#e7ba52",
    "greater_mlp": "#637939",
    "mlp": "#7f7f7f",
}
PHASE_ORDER = ["base", "clean", "poisoned", "retrain", "control"]


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def phase_offsets(metrics: pd.DataFrame) -> dict[str, int]:
    """Global step at which each phase starts: a phase starts where its parent ended."""
    ends: dict[str, int] = {"base": 0}
    offsets: dict[str, int] = {}
    for phase, rows in metrics[metrics.phase != "base"].groupby("phase", sort=False):
        parent = rows.parent.iloc[0] or "base"
        offsets[phase] = ends.get(parent, 0)
        ends[phase] = offsets[phase] + int(rows.step.max())
    return offsets


def metric_curves(
    metrics: pd.DataFrame, measures=("clean_score", "clean_accuracy", "poison_success", "lm_loss")
) -> bytes:
    """Training curves through all phases, every seed thin, the control branch dashed."""
    plt = pyplot()
    measures = [m for m in measures if m in metrics.columns]
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.2))
    axes = np.atleast_1d(axes)
    colors = {"clean": "#1f77b4", "poisoned": "#d62728", "retrain": "#2ca02c", "control": "#7f7f7f"}
    for seed, runs in metrics.groupby("seed"):
        offsets = phase_offsets(runs)
        base = runs[runs.phase == "base"]
        for ax, m in zip(axes, measures, strict=True):
            for phase, rows in runs[runs.phase != "base"].groupby("phase", sort=False):
                start = offsets[phase]
                parent = rows.parent.iloc[0] or "base"
                before = runs[runs.phase == parent].sort_values("step").tail(1)
                x = np.concatenate([[start], start + rows.step.values])
                y = np.concatenate(
                    [before[m].values[-1:] if len(before) else base[m].values[:1], rows[m].values]
                )
                ax.plot(
                    x,
                    y,
                    color=colors.get(phase, "black"),
                    lw=1.2,
                    alpha=0.8,
                    ls="--" if phase == "control" else "-",
                    label=phase if seed == metrics.seed.min() else None,
                )
            ax.scatter([0], base[m].values[:1], color="black", s=12, zorder=3)
    for ax, m in zip(axes, measures, strict=True):
        ax.set_title(m.replace("_", " "))
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return png_bytes(fig)


def head_heatmaps(heads: pd.DataFrame, measure: str, phases=PHASE_ORDER) -> bytes:
    """One layer x head heatmap of `measure` per phase (mean over seeds), shared color scale."""
    plt = pyplot()
    data = heads[(heads.measure == measure) & (heads["head"] >= 0)]  # heads only: MLPs are head -1
    phases = [p for p in phases if p in set(data.phase)]
    grids = {p: data[data.phase == p].groupby(["layer", "head"]).value.mean().unstack() for p in phases}
    vmax = max(float(np.nanmax(np.abs(g.values))) for g in grids.values()) or 1.0
    fig, axes = plt.subplots(1, len(phases), figsize=(2.6 * len(phases) + 1, 2.6))
    axes = np.atleast_1d(axes)
    for ax, p in zip(axes, phases, strict=True):
        im = ax.imshow(grids[p].values, cmap="RdBu", vmin=-vmax, vmax=vmax)
        ax.set_title(p)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(grids[p].shape[1]))
        ax.set_yticks(range(grids[p].shape[0]))
    fig.colorbar(im, ax=list(axes), shrink=0.8, label=measure)
    return png_bytes(fig)


def circuit_diagram(circuits: dict[str, dict], n_layers: int, n_heads: int, mlps: bool = False) -> bytes:
    """Each phase's circuit on the layer x head grid (with `mlps`, one more column: each layer's
    MLP): colour = role, arrows = edges; a black ring marks a component that is in this phase's
    circuit but not the base's (or the reverse, hollow)."""
    plt = pyplot()
    phases = [p for p in PHASE_ORDER if p in circuits]
    columns = n_heads + int(mlps)
    fig, axes = plt.subplots(1, len(phases), figsize=(2.8 * len(phases) + 0.4 * mlps, 2.2 + 0.5 * n_layers))
    axes = np.atleast_1d(axes)
    base_heads = {(h["layer"], h["head"]) for h in circuits.get("base", {}).get("heads", [])}
    x_of = lambda head: n_heads if head < 0 else head  # noqa: E731 - the MLP column is the last
    for ax, p in zip(axes, phases, strict=True):
        c = circuits[p]
        mine = {(h["layer"], h["head"]): h["role"] for h in c["heads"]}
        for lay in range(n_layers):
            for head in [*range(n_heads), *([-1] if mlps else [])]:
                ax.scatter(
                    x_of(head),
                    lay,
                    s=120,
                    marker="s" if head < 0 else "o",
                    color=ROLE_COLORS.get(mine.get((lay, head)), "#eeeeee"),
                    edgecolors="black" if (lay, head) in mine and (lay, head) not in base_heads else "none",
                    linewidths=1.8,
                    zorder=2,
                )
                if (lay, head) in base_heads and (lay, head) not in mine:
                    ax.scatter(
                        x_of(head), lay, s=160, facecolors="none", edgecolors="black", linewidths=1, zorder=3
                    )
        for e in Circuit.from_json(c).edges:
            if isinstance(e.receiver, str):  # "logits"
                continue
            (sl, sh), (rl, rh) = e.sender, e.receiver
            ax.annotate(
                "",
                xy=(x_of(rh), rl),
                xytext=(x_of(sh), sl),
                arrowprops={"arrowstyle": "->", "color": "gray", "lw": 0.8},
            )
        ax.set_title(p)
        ax.set_xticks(range(columns), [*map(str, range(n_heads)), *(["MLP"] if mlps else [])])
        ax.set_yticks(range(n_layers))
        ax.set_xlim(-0.6, columns - 0.4)
        ax.set_ylim(-0.6, n_layers - 0.4)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    used = {h["role"] for c in circuits.values() for h in c["heads"]}
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=c, label=r) for r, c in ROLE_COLORS.items() if r in used
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, -0.12))
    return png_bytes(fig)


def cmap_maps(cmap: pd.DataFrame) -> bytes:
    """Share of each source model's gap to the base explained by patching one head into the base."""
    plt = pyplot()
    data = cmap[(cmap.position == "all") & (cmap.activation == "output") & (cmap.measure == "share")]
    sources = [p for p in PHASE_ORDER if p in set(data.source)]
    fig, axes = plt.subplots(1, len(sources), figsize=(2.6 * len(sources) + 1, 2.6))
    axes = np.atleast_1d(axes)
    for ax, src in zip(axes, sources, strict=True):
        grid = data[data.source == src].groupby(["layer", "head"]).value.mean().unstack()
        im = ax.imshow(grid.values, cmap="PuOr", vmin=-1, vmax=1)
        ax.set_title(f"{src} -> base")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="share of gap")
    return png_bytes(fig)


def recovery_bars(rec: pd.DataFrame, members: set[str]) -> bytes:
    """Per-head recovery of the direct effect after retraining (mean and range over seeds)."""
    plt = pyplot()
    data = rec[rec.measure == "dla_recovery"]
    stats = data.groupby("component").value.agg(["mean", "min", "max"]).dropna()
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(stats)), 3))
    colors = ["#2ca02c" if c in members else "#aaaaaa" for c in stats.index]
    ax.bar(
        stats.index,
        stats["mean"],
        color=colors,
        yerr=[stats["mean"] - stats["min"], stats["max"] - stats["mean"]],
        capsize=2,
    )
    ax.axhline(1, color="black", lw=0.8, ls="--")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel("recovery (1 = back to clean)")
    ax.set_title("per-head recovery after clean retraining (green: base-circuit members)")
    ax.tick_params(axis="x", rotation=90)
    return png_bytes(fig)


def tracking_curves(tracking: pd.DataFrame) -> bytes:
    """The base circuit's faithfulness and its members' direct effects at every checkpoint."""
    plt = pyplot()
    offsets_order = ["base", "clean", "poisoned", "retrain"]
    data = tracking[tracking.phase.isin(offsets_order)].copy()
    ends, start = {}, 0
    for p in offsets_order:
        rows = data[data.phase == p]
        ends[p] = start
        start += int(rows.step.max()) if len(rows) and p != "base" else 0
    data["x"] = [ends[p] + s for p, s in zip(data.phase, data.step, strict=True)]
    members = list(dict.fromkeys(data[data.measure == "dla"].component))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for seed, rows in data.groupby("seed"):
        rows = rows.sort_values("x")
        faith = rows[rows.measure == "faithfulness"]
        axes[0].plot(faith.x, faith.value, color="#1f77b4", alpha=0.7)
        for c in members:
            mine = rows[(rows.measure == "dla") & (rows.component == c)]
            axes[1].plot(mine.x, mine.value, alpha=0.7, label=c if seed == data.seed.min() else None)
    for ax, title in zip(axes, ["base circuit faithfulness", "members' direct effect (DLA)"], strict=True):
        for p in offsets_order[1:]:
            ax.axvline(ends[p], color="gray", lw=0.6, ls=":")
            ax.text(ends[p], ax.get_ylim()[1], p, fontsize=7, va="top")
        ax.set_title(title)
        ax.set_xlabel("training step (clean -> poisoned -> retrain)")
        ax.grid(alpha=0.3)
    if members:
        axes[1].legend(fontsize=7, ncol=2)
    return png_bytes(fig)


def faithfulness_curves(curves: pd.DataFrame) -> bytes:
    """Faithfulness of edge-attribution circuits against their size, one line per phase."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for ax, method in zip(axes, ["top_n", "greedy"], strict=True):
        rows = curves[curves.method == method]
        for phase in [p for p in PHASE_ORDER if p in set(rows.phase)]:
            mean = rows[rows.phase == phase].groupby("edges").faithfulness.mean()
            ax.plot(mean.index, mean.values, marker="o", ms=3, label=phase)
        ax.set_xscale("log", base=2)
        ax.axhline(1, color="black", lw=0.6, ls=":")
        ax.set_title(f"{method} edges")
        ax.set_xlabel("edges in the circuit")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("faithfulness")
    axes[0].legend(fontsize=8)
    return png_bytes(fig)
