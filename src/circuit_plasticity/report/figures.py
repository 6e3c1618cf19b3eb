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
) -> bytes | None:
    """Training curves through all phases, every seed thin, the control branch dashed."""
    plt = pyplot()
    measures = [m for m in measures if m in metrics.columns]
    if not measures:
        return None
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


def _panels(n: int, width: float = 2.6, height: float = 2.6):
    """A row of `n` heatmap panels sharing their y axis, spaced so no label meets its neighbour."""
    plt = pyplot()
    fig, axes = plt.subplots(1, n, figsize=(width * n + 1.2, height), sharey=True, squeeze=False)
    fig.subplots_adjust(wspace=0.12)
    return fig, list(axes[0])


def head_heatmaps(heads: pd.DataFrame, measure: str, phases=PHASE_ORDER) -> bytes | None:
    """One layer x head heatmap of `measure` per phase (mean over seeds), shared color scale;
    None when no head has the measure."""
    data = heads[(heads.measure == measure) & (heads["head"] >= 0)]  # heads only: MLPs are head -1
    phases = [p for p in phases if p in set(data.phase)]
    if not phases:
        return None
    grids = {p: data[data.phase == p].groupby(["layer", "head"]).value.mean().unstack() for p in phases}
    vmax = max(float(np.nanmax(np.abs(g.values))) for g in grids.values()) or 1.0
    fig, axes = _panels(len(phases))
    for ax, p in zip(axes, phases, strict=True):
        im = ax.imshow(grids[p].values, cmap="RdBu", vmin=-vmax, vmax=vmax)
        ax.set_title(p)
        ax.set_xlabel("head")
        ax.set_xticks(range(grids[p].shape[1]))
        ax.set_yticks(range(grids[p].shape[0]))
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=axes, shrink=0.8, label=measure)
    return png_bytes(fig)


def circuit_diagram(circuits: dict[str, dict], n_layers: int, n_heads: int, mlps: bool = False) -> bytes:
    """Each phase's circuit on the layer x head grid (with `mlps`, one more column: each layer's
    MLP): colour = role, arrows = edges (sender -> receiver; edges to the logits are left out);
    a black ring marks a component that is in this phase's
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
    axes[0].set_ylabel("layer")
    used = {h["role"] for c in circuits.values() for h in c["heads"]}
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=c, label=r) for r, c in ROLE_COLORS.items() if r in used
    ]
    handles += [
        plt.Line2D([], [], color="gray", lw=0.8, marker=">", ms=4, label="edge (sender -> receiver)"),
        plt.Line2D([], [], marker="o", ls="", color="#cccccc", mec="black", mew=1.8, label="joined"),
        plt.Line2D([], [], marker="o", ls="", mfc="none", mec="black", label="left"),
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, -0.14))
    return png_bytes(fig)


def cmap_maps(cmap: pd.DataFrame) -> bytes | None:
    """Share of each source model's gap to the base explained by patching one head into the base."""
    data = cmap[(cmap.position == "all") & (cmap.activation == "output") & (cmap.measure == "share")]
    sources = [p for p in PHASE_ORDER if p in set(data.source)]
    if not sources:
        return None
    fig, axes = _panels(len(sources))
    for ax, src in zip(axes, sources, strict=True):
        grid = data[data.source == src].groupby(["layer", "head"]).value.mean().unstack()
        im = ax.imshow(grid.values, cmap="PuOr", vmin=-1, vmax=1)
        ax.set_title(f"{src} -> base")
        ax.set_xlabel("head")
        ax.set_xticks(range(grid.shape[1]))
        ax.set_yticks(range(grid.shape[0]))
    axes[0].set_ylabel("layer")
    fig.colorbar(im, ax=axes, shrink=0.8, label="share of gap")
    return png_bytes(fig)


def recovery_bars(rec: pd.DataFrame, members: set[str]) -> bytes | None:
    """Per-head recovery of the direct effect after retraining (mean and range over seeds);
    None when no head's recovery is defined."""
    plt = pyplot()
    data = rec[rec.measure == "dla_recovery"]
    stats = data.groupby("component").value.agg(["mean", "min", "max"]).dropna()
    if stats.empty:
        return None
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


SEED_STYLES = ["-", "--", ":", "-."]


def tracking_curves(tracking: pd.DataFrame) -> bytes | None:
    """The base circuit's faithfulness and its members' direct effects at every checkpoint.
    Each seed has its own base circuit: one colour per component across seeds, one line style
    per seed, the legend (every component drawn, then the seeds) beside the plot."""
    plt = pyplot()
    offsets_order = ["base", "clean", "poisoned", "retrain"]
    data = tracking[tracking.phase.isin(offsets_order)].copy()
    if data.empty:
        return None
    ends, start = {}, 0
    for p in offsets_order:
        rows = data[data.phase == p]
        ends[p] = start
        start += int(rows.step.max()) if len(rows) and p != "base" else 0
    data["x"] = [ends[p] + s for p, s in zip(data.phase, data.step, strict=True)]
    dla = data[data.measure == "dla"]
    members = sorted(set(dla.component), key=lambda c: (len(c), c))
    palette = plt.get_cmap("tab10" if len(members) <= 10 else "tab20").colors
    color = {c: palette[i % len(palette)] for i, c in enumerate(members)}
    seeds = sorted(set(data.seed))
    style = {s: SEED_STYLES[i % len(SEED_STYLES)] for i, s in enumerate(seeds)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
    for seed, rows in data.groupby("seed"):
        rows = rows.sort_values("x")
        faith = rows[rows.measure == "faithfulness"]
        axes[0].plot(faith.x, faith.value, color="#1f77b4", ls=style[seed], alpha=0.8)
        for c in members:
            mine = rows[(rows.measure == "dla") & (rows.component == c)]
            if len(mine):
                axes[1].plot(mine.x, mine.value, color=color[c], ls=style[seed], alpha=0.8)
    for ax, title in zip(axes, ["base circuit faithfulness", "members' direct effect (DLA)"], strict=True):
        for p in offsets_order[1:]:
            ax.axvline(ends[p], color="gray", lw=0.6, ls=":")
        ax.set_xticks([ends[p] for p in offsets_order[1:]], offsets_order[1:], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training: each phase starts at its tick")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=color[c], label=c) for c in members]
    handles += [plt.Line2D([], [], color="black", ls=style[s], label=f"seed {s}") for s in seeds]
    axes[1].legend(
        handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), ncol=1 + len(handles) // 14
    )
    return png_bytes(fig)


def faithfulness_curves(curves: pd.DataFrame) -> bytes | None:
    """Faithfulness of edge-attribution circuits against their size, one line per phase; one
    panel per method that has rows (the study computes top-n only: greedy curves are optional)."""
    plt = pyplot()
    methods = [m for m in ["top_n", "greedy"] if (curves.method == m).any()]
    if not methods:
        return None
    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 3.2), sharey=True, squeeze=False)
    axes = list(axes[0])
    titles = {"top_n": "the n best edges", "greedy": "edges added greedily"}
    for ax, method in zip(axes, methods, strict=True):
        rows = curves[curves.method == method]
        for phase in [p for p in PHASE_ORDER if p in set(rows.phase)]:
            mean = rows[rows.phase == phase].groupby("edges").faithfulness.mean()
            ax.plot(mean.index, mean.values, marker="o", ms=3, label=phase)
        ax.set_xscale("log", base=2)
        ax.axhline(1, color="black", lw=0.6, ls=":")
        ax.set_title(titles[method])
        ax.set_xlabel("edges in the circuit")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("faithfulness")
    axes[0].legend(fontsize=8)
    return png_bytes(fig)


def localization_views(table: pd.DataFrame) -> bytes:
    """Bars per component: origin, carrier and pattern effects of the poison (and the control's
    origin effects in grey), mean over seeds; components ordered as the model's."""
    plt = pyplot()
    t = table[table.measure == "effect"]
    mean = t.groupby(["view", "change", "component"], sort=False).value.mean()
    order = list(dict.fromkeys(t[t.view == "origin"].component)) or list(dict.fromkeys(t.component))
    for name in dict.fromkeys(t.component):
        if name not in order:
            order.append(name)
    x = np.arange(len(order))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.42 * len(order) + 2), 3.6))
    changes = [c for c in dict.fromkeys(t.change) if c != "poisoned"]
    series = [
        ("origin", "poisoned", "#b42318", "weights (origin)"),
        ("carrier", "poisoned", "#2f6db5", "output (carrier)"),
        ("pattern", "poisoned", "#d4a72c", "attention pattern (paper)"),
    ]
    series += [("origin", c, "#9a9a9a", f"weights, {c}") for c in changes[:1]]
    width = 0.8 / len(series)
    for i, (view, change, color, label) in enumerate(series):
        values = [mean.get((view, change, c), np.nan) for c in order]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, color=color, label=label)
    ax.axhline(0, color="#444", lw=0.6)
    ax.set_xticks(x, order, rotation=90, fontsize=8)
    ax.set_ylabel("score change")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return png_bytes(fig)


EDGE_PHASES = {"clean": "#2f6db5", "poisoned": "#b42318", "retrain": "#2a9d55", "control": "#9a9a9a"}


def edge_tracking_curves(table: pd.DataFrame, percent: float = 5.0) -> bytes | None:
    """Node and edge Jaccard of each checkpoint's top circuit (`percent` % of edges) with its
    phase's reference (clean: the base; the others: the clean model), mean over seeds, through
    training: the clean phase from step 0, the poison after it, the retrain after the poison;
    the control branch (grey, dashed) from the clean model's end, at its own steps."""
    plt = pyplot()
    rows = table[(table.percent == percent) & table.measure.isin(["node_jaccard", "edge_jaccard"])]
    if rows.empty:
        return None
    last = rows.groupby("phase").step.max()
    offset = {"clean": 0, "control": int(last.get("clean", 0)), "poisoned": int(last.get("clean", 0))}
    offset["retrain"] = offset["poisoned"] + int(last.get("poisoned", 0))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for ax, measure in zip(axes, ["node_jaccard", "edge_jaccard"], strict=True):
        for phase, color in EDGE_PHASES.items():
            mine = rows[(rows.phase == phase) & (rows.measure == measure)]
            if mine.empty:
                continue
            mean = mine.groupby("step").value.mean()
            x = [offset[phase] + s for s in mean.index]
            ls = "--" if phase == "control" else "-"
            ax.plot(x, mean.values, marker="o", ms=3, color=color, ls=ls, label=phase)
        ax.set_title(
            f"{measure.split('_')[0]} overlap with the reference (top {percent:g} % of edges)", fontsize=9
        )
        ax.set_xlabel("training step (phases one after the other)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Jaccard")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig)


CHANGE_TITLES = {
    "clean": "clean vs base",
    "poisoned": "poisoned vs clean",
    "retrain": "retrain vs clean",
    "control": "control vs clean",
}
SLOT_OFFSETS = {"q": (-0.22, -0.2), "k": (0.0, -0.27), "v": (0.22, -0.2), "": (0.0, 0.0)}


def drawn_edge_changes(picked: pd.DataFrame, phase: str) -> pd.DataFrame:
    """The rows of `phase` the edge-change diagram draws, largest last (on top): an edge whose
    score did not change at all is not drawn (it would take the "fell" colour and mean nothing;
    it appears only when fewer than `top` edges changed)."""
    rows = picked[(picked.phase == phase) & (picked.change != 0)]
    return rows.sort_values("rank", ascending=False)


def edge_change_diagram(
    changes: pd.DataFrame,
    n_layers: int,
    n_heads: int,
    mlps: bool = False,
    top: int = 10,
    circuits: dict[str, dict] | None = None,
) -> bytes | None:
    """Per phase, the `top` edges whose EAP-IG score changed most from the phase's reference
    (edge_changes.parquet of one seed), on the circuit diagram's layer x head grid with the
    input below and the logits above: red where the score rose, blue where it fell, width
    proportional to |change| (one scale for every panel, so the control's thin arrows are
    comparable), the receiver's q/k/v input lettered at the arrow's end; with `circuits` (the
    phases' circuit.json), each phase's circuit members faintly in their role's colour, as in
    `circuit_diagram`."""
    plt = pyplot()
    phases = [p for p in CHANGE_TITLES if p in set(changes.phase)]
    if not phases:
        return None
    picked = changes[changes["rank"] < top]
    scale = float(picked.change.abs().max()) or 1.0
    columns = n_heads + int(mlps)
    middle = (columns - 1) / 2

    def where(node: str) -> tuple[float, float]:
        if node == "input":
            return middle, -1.0
        if node == "logits":
            return middle, float(n_layers)
        if node.startswith("m"):
            return float(n_heads), float(node[1:])
        layer, head = node[1:].split(".h")
        return float(head), float(layer)

    fig, axes = plt.subplots(
        1, len(phases), figsize=(2.9 * len(phases) + 0.4 * mlps, 3.0 + 0.55 * n_layers), sharey=True
    )
    axes = np.atleast_1d(axes)
    for ax, phase in zip(axes, phases, strict=True):
        roles = {(h["layer"], h["head"]): h["role"] for h in (circuits or {}).get(phase, {}).get("heads", [])}
        for lay in range(n_layers):
            for head in [*range(n_heads), *([-1] if mlps else [])]:
                x = n_heads if head < 0 else head
                color = ROLE_COLORS.get(roles.get((lay, head)), "#dddddd")
                ax.scatter(x, lay, s=120, marker="s" if head < 0 else "o", color=color, alpha=0.45, zorder=2)
        for node in ("input", "logits"):
            ax.scatter(*where(node), s=260, marker="D", color="#bbbbbb", zorder=2)
        rows = drawn_edge_changes(picked, phase)
        for r in rows.itertuples():
            sx, sy = where(r.sender)
            rx, ry = where(r.receiver)
            dx, dy = SLOT_OFFSETS.get(r.input, (0.0, 0.0))
            end = (rx + dx, ry + dy) if r.receiver != "logits" else (rx, ry - 0.2)
            color = "#b42318" if r.change > 0 else "#2f6db5"
            weight = abs(r.change) / scale
            ax.annotate(
                "",
                xy=end,
                xytext=(sx, sy + 0.2 if r.sender == "input" else sy),
                arrowprops={
                    "arrowstyle": "-|>",
                    "mutation_scale": 7 + 7 * weight,
                    "color": color,
                    "lw": 0.5 + 4.0 * weight,
                    "alpha": 0.85,
                    "shrinkA": 4,
                    "shrinkB": 5 if r.input else 1,
                },
                zorder=3,
            )
        for r in rows.drop_duplicates(["receiver", "input"]).itertuples():
            if r.input:  # the receiver slot, where its arrows point
                rx, ry = where(r.receiver)
                dx, dy = SLOT_OFFSETS[r.input]
                ax.text(
                    rx + dx,
                    ry + dy,
                    r.input,
                    fontsize=7,
                    ha="center",
                    va="center",
                    color="#222",
                    bbox={"boxstyle": "round,pad=0.12", "fc": "white", "ec": "#888", "lw": 0.5},
                    zorder=5,
                )
        step = rows.step.iloc[0] if len(rows) else ""
        ax.set_title(f"{CHANGE_TITLES[phase]} (step {step})", fontsize=9)
        ax.set_xticks(range(columns), [*map(str, range(n_heads)), *(["MLP"] if mlps else [])])
        ax.set_yticks([-1, *range(n_layers), n_layers], ["input", *map(str, range(n_layers)), "logits"])
        ax.set_xlim(-0.6, columns - 0.4)
        ax.set_ylim(-1.5, n_layers + 0.5)
        ax.set_xlabel("head")
    axes[0].set_ylabel("layer")
    handles = [
        plt.Line2D([], [], color="#b42318", lw=2, label="score rose"),
        plt.Line2D([], [], color="#2f6db5", lw=2, label="score fell"),
        plt.Line2D([], [], color="#555", lw=4.5, label=f"|change| {scale:.2g}"),
        plt.Line2D([], [], color="#555", lw=0.5 + 4.0 * 0.25, label=f"|change| {scale / 4:.2g}"),
    ]
    used = {h["role"] for c in (circuits or {}).values() for h in c.get("heads", [])}
    handles += [
        plt.Line2D([], [], marker="o", ls="", color=c, alpha=0.45, label=r)
        for r, c in ROLE_COLORS.items()
        if r in used
    ]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, -0.12))
    return png_bytes(fig)
