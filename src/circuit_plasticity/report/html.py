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
.inconclusive{color:#9a6700;font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}h2{border-bottom:1px solid #ddd;padding-bottom:4px}
.note{color:#555;font-size:13px}
"""

HEADLINES = [
    ("amplification", "amplification_gain", "clean - base {metric}"),
    ("amplification", "amplification_member_share", "share of the gain carried by base-circuit members"),
    ("amplification", "amplification_nonmember_share", "share carried by non-members"),
    ("amplification", "amplification_uniform_share", "members' share under a uniform rescaling"),
    ("amplification", "amplification_joined_share", "share carried by heads that joined the circuit"),
    ("amplification", "amplification_heads_joined", "heads that joined the circuit"),
    ("amplification", "amplification_member_share_control", "members' share, base -> control"),
    ("localization", "localization_drop", "poisoned - clean {metric}"),
    (
        "localization",
        "localization_top_share",
        "share of the drop carried by the top-k heads (held-out half)",
    ),
    ("localization", "localization_random_share", "same share for random k-head sets"),
    ("localization", "localization_p_random", "p against random k-sets (Fisher over seeds)"),
    ("localization", "localization_concentration", "concentration of the poison's per-head change"),
    ("localization", "localization_concentration_control", "same for the clean -> control change"),
    ("localization", "localization_concentration_excess", "poison minus control concentration"),
    ("localization", "localization_top_in_base_circuit", "top-k heads that are base-circuit members"),
    ("localization", "localization_weight_share_topk", "share of weight change in the k most-changed heads"),
    ("neuroplasticity", "neuroplasticity_behaviour_recovery", "drop recovered, toward the clean model"),
    ("neuroplasticity", "neuroplasticity_behaviour_recovery_to_base", "drop recovered, toward the base"),
    ("neuroplasticity", "neuroplasticity_localized_recovery", "localized heads' recovery to clean"),
    ("neuroplasticity", "neuroplasticity_faithfulness_retrain", "base-circuit faithfulness, retrained"),
    ("neuroplasticity", "neuroplasticity_faithfulness_clean", "base-circuit faithfulness, clean"),
    ("neuroplasticity", "neuroplasticity_faithfulness_control", "base-circuit faithfulness, control"),
    ("neuroplasticity", "neuroplasticity_faithfulness_random", "random circuits of its size, retrained"),
    ("neuroplasticity", "neuroplasticity_faithfulness_gap", "retrained minus clean/control faithfulness"),
    ("neuroplasticity", "neuroplasticity_p_random", "p against random circuits (Fisher over seeds)"),
    ("neuroplasticity", "neuroplasticity_node_jaccard", "node Jaccard, base vs retrained circuit"),
    ("targeted repair", "repair_recovery", "drop recovered training only the localized heads"),
    ("targeted repair", "repair_random_recovery", "drop recovered training as many random heads"),
    ("targeted repair", "repair_advantage", "localized minus random"),
    ("hysteresis", "hysteresis_gap_area", "mean |retrain - clean| {metric}, same steps"),
    ("hysteresis", "hysteresis_final_gap", "retrain minus clean, final {metric}"),
]


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def write_page(out: Path, parts: list[str]) -> Path:
    """The page's parts, one per line, as out/report/index.html (atomically); its path."""
    path = out / "report" / "index.html"
    write_atomic(path, lambda h: h.write("\n".join(parts)))
    return path


def img_tag(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _ci(r) -> str:
    if not (isinstance(r.ci_low, float) and math.isfinite(r.ci_low)):
        return "-"
    mark = "*" if bool(getattr(r, "clipped", False)) else ""
    return f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]{mark}"


METRICS = {"ioi": "logit difference", "greater-than": "probability difference"}


def _verdict_section(verdicts: pd.DataFrame, findings: pd.DataFrame, metric: str) -> list[str]:
    """Verdicts with their reasons; each finding's evidence beside its null control; all numbers."""
    from circuit_plasticity.compare.verdicts import SIDE_BY_SIDE

    e = html.escape
    s = findings.set_index("measure")
    parts = ["<h2>Verdicts</h2><table><tr><th>finding</th><th>verdict</th><th>why</th><th>rule</th></tr>"]
    for r in verdicts.itertuples():
        parts.append(
            f"<tr><td>{e(r.finding)}</td><td class='{e(r.verdict)}'>{e(r.verdict)}</td>"
            f"<td>{e(r.reason)}</td><td class='note'>{e(r.rule)}</td></tr>"
        )
    parts.append(
        "</table><h2>Evidence beside its control</h2><table><tr><th>finding</th>"
        "<th>evidence</th><th>value [95 % CI]</th><th>control</th><th>value [95 % CI]</th></tr>"
    )
    for finding, measure, label, control, control_label in SIDE_BY_SIDE:
        if measure not in s.index:
            continue
        ev, ctl = s.loc[measure], s.loc[control] if control in s.index else None
        right = f"{_fmt(ctl['mean'])} {_ci(ctl)}" if ctl is not None else "not measured"
        parts.append(
            f"<tr><td>{e(finding)}</td><td>{e(label)}</td><td>{_fmt(ev['mean'])} {_ci(ev)}</td>"
            f"<td>{e(control_label)}</td><td>{right}</td></tr>"
        )
    parts.append(
        "</table><h2>Numbers behind the verdicts</h2><table><tr><th>finding</th><th>measure</th>"
        "<th>mean</th><th>95 % CI</th><th>seeds</th><th>interval</th></tr>"
    )
    for finding, key, label in HEADLINES:
        if key in s.index:
            r = s.loc[key]
            parts.append(
                f"<tr><td>{e(finding)}</td><td>{e(label.format(metric=metric))}</td><td>{_fmt(r['mean'])}</td>"
                f"<td>{_ci(r)}</td><td>{int(r.n_seeds)}</td><td class='note'>{e(str(r.interval))}</td></tr>"
            )
    parts.append(
        "</table><p class='note'>* clipped to [0, 1]. n/a: not applicable (the change a ratio "
        "divides by is within noise).</p>"
    )
    return parts


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
    metric = METRICS.get(str(spec_summary.get("task", "ioi")), "score")
    parts += _verdict_section(verdicts, findings, metric)
    parts.append(
        f"<h2>Task score per phase</h2><table><tr><th>phase</th><th>{metric} (mean over seeds)</th>"
        "<th>95 % CI</th><th>accuracy</th></tr>"
    )
    for r in scores.itertuples():
        parts.append(
            f"<tr><td>{e(r.phase)}</td><td>{_fmt(r.score)}</td><td>[{_fmt(r.ci_low)}, "
            f"{_fmt(r.ci_high)}]</td><td>{_fmt(r.accuracy)}</td></tr>"
        )
    parts.append("</table>")
    for heading, caption, png in figures:
        parts.append(f"<h2>{e(heading)}</h2><p class='note'>{e(caption)}</p>{img_tag(png, heading)}")
    parts.append(
        "<h2>Tables</h2><p class='note'>Every number above is in <code>tables/</code> "
        "(Parquet; CSV with <code>--csv</code>): findings, findings_by_seed, verdicts, metrics, "
        "heads, circuits, tracking, cmap, recovery, weights.</p></body></html>"
    )
    return write_page(out, parts)
