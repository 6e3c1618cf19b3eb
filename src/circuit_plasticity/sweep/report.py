"""The sweep report: one offline page with a dose-response figure per swept variable (each
verdict's measures, mean and 95 % CI over seeds, against the variable; the verdicts as a strip)
and a table of every point's verdicts linking to the point's own report. Built from the sweep
tables with the study report's helpers (style, escaping, embedded PNGs)."""

from __future__ import annotations

import html
import json
import math

import numpy as np
import pandas as pd

from circuit_plasticity.compare.verdicts import CRITERIA
from circuit_plasticity.fileio import atomic_path
from circuit_plasticity.report.figures import png_bytes, pyplot
from circuit_plasticity.report.html import STYLE, img_tag, write_page
from circuit_plasticity.sweep.results import SweepTables
from circuit_plasticity.sweep.spec import Sweep

SCORES = ("score_clean", "score_poisoned", "score_retrain", "score_control")
VERDICT_COLORS = {
    "yes": "#1a7f37",
    "no": "#b42318",
    "inconclusive": "#d4a72c",
    "not testable at this scale": "#8c8c8c",
}


def verdict_measures() -> dict[str, list[str]]:
    """Each finding's criteria measures (preconditions left out), plus the task scores."""
    rows = {"task score": list(SCORES)}
    for finding, criteria in CRITERIA.items():
        rows[finding] = [c.measure for c in criteria if c.kind != "requires"]
    return rows


def _bars(sweep: Sweep) -> dict[str, float]:
    """The verdicts' bars, drawn where every point judges by the same thresholds."""
    thresholds = {json.dumps(p.spec_json()["verdicts"], sort_keys=True) for p in sweep.points}
    if len(thresholds) != 1:
        return {}
    t = sweep.points[0].spec.verdicts
    return {c.measure: c.bar(t) for criteria in CRITERIA.values() for c in criteria if c.kind != "requires"}


def _axis(values: pd.Series) -> tuple[dict, list | None]:
    """x positions of a swept variable: its numbers, or category indices with their labels."""
    unique = list(dict.fromkeys(values))
    if all(isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool) for v in unique):
        return {v: float(v) for v in unique}, None
    return {v: float(i) for i, v in enumerate(unique)}, [str(v) for v in unique]


EDGE_ROW = "nodes or edges (poison)"
EDGE_PANELS = [  # (measure, its control null drawn beside it, grey and dashed)
    ("edges_poisoned_edge_change", "edges_poisoned_null_edge_change"),
    ("edges_poisoned_node_change", "edges_poisoned_null_node_change"),
    ("edges_poisoned_excess", None),
]


def panel_rows(findings: pd.DataFrame) -> dict[str, list[tuple[str, str | None]]]:
    """The figure's rows of panels, each panel a measure and its null (None: none drawn): the
    verdicts' measures, then the poison's edge and node change beside the control's at its
    steps (study/edge_tracking.py) where some point measured them."""
    rows = {k: [(m, None) for m in v] for k, v in verdict_measures().items()}
    measured = set(findings.measure)
    if any(m in measured for m, _ in EDGE_PANELS):
        rows[EDGE_ROW] = EDGE_PANELS
    return rows


def _draw(
    ax,
    series,
    measure: str,
    variable: str,
    xs: dict,
    width: float,
    others: list,
    colors,
    what: str | None = None,
) -> bool:
    """One measure's mean and 95 % interval against `variable`, a line per series, `what` in
    its label (a "control" line dashed and hollow, grey for a single series, a little to the
    right); whether anything was drawn."""
    null = what == "control"
    drawn = False
    for i, (key, group) in enumerate(series):
        g = group[group.measure == measure]
        g = g.assign(x=g[variable].map(xs)).sort_values("x")
        if g.empty:
            continue
        drawn = drawn or bool(g["mean"].notna().any())
        low = (g["mean"] - g.ci_low).clip(lower=0).fillna(0)
        high = (g.ci_high - g["mean"]).clip(lower=0).fillna(0)
        name = ", ".join(
            f"{k}={x}" for k, x in zip(others, key if isinstance(key, tuple) else (key,), strict=False)
        )
        color = "#8c8c8c" if null and not others else colors[i % len(colors)]
        label = ", ".join(x for x in (name, what) if x) or None
        ax.errorbar(
            g.x + (i - (len(series) - 1) / 2) * width + (3 * width if null else 0.0),
            g["mean"],
            yerr=[low, high],
            marker="o",
            ms=4,
            capsize=3,
            color=color,
            mfc="white" if null else color,
            ls="--" if null else "-",
            label=label,
        )
    return drawn


def dose_response(tables: SweepTables, variable: str, others: list[str], bars: dict[str, float]) -> bytes:
    """Rows: the verdict strip, the task scores, then each finding's measures, then (where
    measured) the poison's edge and node change with the control's beside them; one line per
    combination of the other swept variables."""
    plt = pyplot()
    f, v = tables.findings, tables.verdicts
    rows = panel_rows(f)
    ncols = max(len(m) for m in rows.values())
    fig = plt.figure(figsize=(3.3 * ncols, 2.4 * (len(rows) + 1)))
    grid = fig.add_gridspec(len(rows) + 1, ncols, hspace=0.75, wspace=0.35)
    xs, labels = _axis(f[variable])
    series = [((), f)] if not others else list(f.groupby(others, sort=False))
    span = max(xs.values()) - min(xs.values()) or 1.0
    width = span * 0.012
    limits = (min(xs.values()) - 0.06 * span, max(xs.values()) + 0.06 * span)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    strip = fig.add_subplot(grid[0, :])
    findings = list(dict.fromkeys(v.finding))
    vseries = [((), v)] if not others else list(v.groupby(others, sort=False))
    for i, (_, group) in enumerate(vseries):
        shift = (i - (len(vseries) - 1) / 2) * width * 3
        for x, finding, verdict in zip(group[variable], group.finding, group.verdict, strict=True):
            marker = {"color": VERDICT_COLORS.get(verdict, "#999"), "s": 140, "marker": "s"}
            strip.scatter(xs[x] + shift, findings.index(finding), **marker)
    strip.set_yticks(range(len(findings)), findings)
    strip.set_xlim(*limits)
    strip.set_ylim(len(findings) - 0.5, -0.5)
    strip.set_title("verdicts (green yes, red no, amber inconclusive, grey not testable)", fontsize=10)
    if labels:
        strip.set_xticks(list(xs.values()), labels)

    for row, (finding, panels) in enumerate(rows.items(), start=1):
        for col, (measure, null) in enumerate(panels):
            ax = fig.add_subplot(grid[row, col])
            what = "poisoned" if null else None
            drawn = _draw(ax, series, measure, variable, xs, width, others, colors, what=what)
            if null:  # the control at the poison's steps
                drawn = _draw(ax, series, null, variable, xs, width, others, colors, what="control") or drawn
                if drawn:
                    ax.legend(fontsize=7)
            if measure in bars:
                ax.axhline(bars[measure], color="#888", ls="--", lw=1)
            if not drawn:
                ax.text(0.5, 0.5, "not applicable", transform=ax.transAxes, ha="center", color="#888")
            ax.set_xlim(*limits)
            ax.set_title(measure.replace("_", " "), fontsize=9)
            ax.set_xlabel(variable, fontsize=8)
            ax.tick_params(labelsize=8)
            if labels:
                ax.set_xticks(list(xs.values()), labels)
            if row == 1 and col == 0 and others:
                ax.legend(fontsize=7)
        box = ax.get_position()  # the row's label at its panels' height
        fig.text(0.005, (box.y0 + box.y1) / 2, finding, rotation=90, va="center", fontsize=10)
    return png_bytes(fig)


def _fmt_value(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) and math.isfinite(value) else str(value)


def build_sweep_report(sweep: Sweep, out, tables: SweepTables):
    """report/index.html of the sweep directory `out`; returns its path."""
    e = html.escape
    variables = sweep.variables
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>circuit-plasticity sweep</title>",
        f"<style>{STYLE}</style></head><body><h1>Sweep: {e(sweep.source)}</h1>",
        f"<p><b>points</b>: {len(sweep.points)} &middot; <b>swept</b>: {e(', '.join(variables) or 'nothing')}"
        f" &middot; <b>model</b>: {e(', '.join(dict.fromkeys(p.spec.model for p in sweep.points)))}</p>",
        "<h2>Verdicts per point</h2><table><tr><th>point</th>",
    ]
    findings = list(dict.fromkeys(tables.verdicts.finding))
    parts += [f"<th>{e(k)}</th>" for k in variables] + [f"<th>{e(f)}</th>" for f in findings] + ["</tr>"]
    by_point = tables.verdicts.set_index(["point", "finding"])
    columns = tables.verdicts.drop_duplicates("point").set_index("point")
    for p in sweep.points:
        link = f"../points/{p.name}/report/index.html"
        parts.append(f"<tr><td><a href='{e(link)}'>{e(p.name)}</a></td>")
        parts += [f"<td>{e(_fmt_value(columns.loc[p.name, k]))}</td>" for k in variables]
        for finding in findings:
            r = by_point.loc[(p.name, finding)]
            parts.append(f"<td class='{e(r.verdict)}' title='{e(r.reason)}'>{e(r.verdict)}</td>")
        parts.append("</tr>")
    parts.append("</table>")
    bars = _bars(sweep)
    for variable in variables:
        if tables.findings[variable].nunique() < 2:
            continue
        others = [k for k in variables if k != variable and tables.findings[k].nunique() > 1]
        png = dose_response(tables, variable, others, bars)
        with atomic_path(out / "report" / f"dose-response-{variable}.png") as tmp:
            tmp.write_bytes(png)
        parts.append(
            f"<h2>Dose-response: {e(variable)}</h2><p class='note'>Each verdict's measures against "
            f"{e(variable)}: mean over seeds with its 95 % interval (tables/sweep.parquet); dashed: "
            "the verdict's bar; top strip: each point's verdicts; last row, where the points "
            "tracked edges: the poison's edge and node change (1 - Jaccard of its top circuits "
            "with the clean model's) beside the control's at the poison's steps (dashed), and "
            "their difference beyond the control"
            + (f"; one line per {e(', '.join(others))}" if others else "")
            + ".</p>"
            + img_tag(png, f"dose-response against {variable}")
        )
    parts.append(
        "<h2>Tables</h2><p class='note'><code>tables/sweep.parquet</code>: one row per point and "
        "measure (mean, 95 % CI, seeds); <code>tables/sweep_verdicts.parquet</code>: one row per "
        "point and finding. Each point's own report holds everything else.</p></body></html>"
    )
    return write_page(out, parts)
