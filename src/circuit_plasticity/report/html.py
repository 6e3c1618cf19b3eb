"""One self-contained HTML page: figures embedded as base64 PNGs, no script, no CDN; every
string that comes from a spec, a model name or a table is escaped."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from circuit_plasticity.fileio import write_atomic

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f4f4f4}.yes{color:#1a7f37;font-weight:bold}.no{color:#b42318;font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}h2{border-bottom:1px solid #ddd;padding-bottom:4px}
.note{color:#555;font-size:13px}
"""

HEADLINES = [
    ("amplification", "amplification_score_ratio", "clean / base logit difference"),
    ("amplification", "amplification_median_member_ratio", "median base-circuit member DLA ratio"),
    ("amplification", "amplification_heads_joined", "heads that joined the circuit"),
    ("localization", "localization_top_share", "share of base->poisoned gap carried by the top-k heads"),
    ("localization", "localization_any_random_mean", "same share for random k-head sets (mean)"),
    ("localization", "localization_p_any", "p-value against random k-head sets"),
    ("localization", "localization_top_in_base_circuit", "top-k heads that are base-circuit members"),
    ("localization", "localization_weight_share_topk", "share of weight change in the k most-changed heads"),
    ("neuroplasticity", "neuroplasticity_score_recovery", "share of the poisoning drop recovered"),
    ("neuroplasticity", "neuroplasticity_median_member_recovery", "median per-member DLA recovery"),
    (
        "neuroplasticity",
        "neuroplasticity_base_circuit_faithfulness_in_retrained",
        "base circuit faithfulness in retrained model",
    ),
    ("neuroplasticity", "neuroplasticity_node_jaccard", "node Jaccard, base vs retrained circuit"),
    (
        "targeted repair",
        "repair_score_recovery",
        "share of the poisoning drop recovered training only the top-k heads",
    ),
    (
        "targeted repair",
        "repair_base_circuit_faithfulness",
        "base circuit faithfulness in the repaired model",
    ),
    ("targeted repair", "repair_trained_head_share", "share of heads trained"),
    ("hysteresis", "hysteresis_gap_area", "mean |retrain - clean| logit difference, same steps"),
    ("hysteresis", "hysteresis_final_gap", "retrain minus clean, final logit difference"),
]


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def render_report(
    out: Path,
    title: str,
    spec_summary: dict,
    verdicts: pd.DataFrame,
    findings: pd.DataFrame,
    scores: pd.DataFrame,
    figures: list[tuple[str, str, bytes]],
) -> Path:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>",
    ]
    parts.append(
        "<p>"
        + " &middot; ".join(f"<b>{e(str(k))}</b>: {e(str(v))}" for k, v in spec_summary.items())
        + "</p>"
    )
    parts.append(
        "<h2>Verdicts</h2><table><tr><th>finding</th><th>holds on this model?</th><th>rule</th></tr>"
    )
    for r in verdicts.itertuples():
        cls, word = ("yes", "yes") if r.holds else ("no", "no")
        parts.append(f"<tr><td>{e(r.finding)}</td><td class='{cls}'>{word}</td><td>{e(r.rule)}</td></tr>")
    parts.append("</table>")
    s = findings.set_index("measure")
    parts.append(
        "<h2>Numbers behind the verdicts</h2><table><tr><th>finding</th><th>measure</th>"
        "<th>mean</th><th>95 % CI</th><th>seeds</th></tr>"
    )
    for finding, key, label in HEADLINES:
        if key in s.index:
            r = s.loc[key]
            ci = f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]" if r.n_seeds > 1 else "one seed"
            parts.append(
                f"<tr><td>{e(finding)}</td><td>{e(label)}</td><td>{_fmt(r['mean'])}</td>"
                f"<td>{ci}</td><td>{int(r.n_seeds)}</td></tr>"
            )
    parts.append("</table>")
    parts.append(
        "<h2>Task score per phase</h2><table><tr><th>phase</th><th>logit diff (mean over seeds)</th>"
        "<th>95 % CI</th><th>accuracy</th></tr>"
    )
    for r in scores.itertuples():
        parts.append(
            f"<tr><td>{e(r.phase)}</td><td>{_fmt(r.score)}</td><td>[{_fmt(r.ci_low)}, "
            f"{_fmt(r.ci_high)}]</td><td>{_fmt(r.accuracy)}</td></tr>"
        )
    parts.append("</table>")
    for heading, caption, png in figures:
        parts.append(f"<h2>{e(heading)}</h2><p class='note'>{e(caption)}</p>{_img(png, heading)}")
    parts.append(
        "<h2>Tables</h2><p class='note'>Every number above is in <code>tables/</code> "
        "(Parquet; CSV with <code>--csv</code>): findings, findings_by_seed, verdicts, metrics, "
        "heads, circuits, tracking, cmap, recovery, weights.</p></body></html>"
    )
    path = out / "report" / "index.html"
    write_atomic(path, lambda h: h.write("\n".join(parts)))
    return path
