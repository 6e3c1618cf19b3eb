"""One self-contained HTML page: figures embedded as base64 PNGs, no script, no CDN; every
string that comes from a spec, a model name or a table is escaped."""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from circuit_plasticity.fileio import write_atomic

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.2em auto;padding:0 1em;color:#222;
line-height:1.4}
h1{margin:0 0 .2em;font-size:26px}h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:1.6em}
table{border-collapse:collapse;margin:1em 0;font-size:14px;max-width:100%}
td,th{border:1px solid #ccc;padding:4px 8px;overflow-wrap:break-word}
th{background:#f4f4f4}.yes{color:#1a7f37;font-weight:bold}.no{color:#b42318;font-weight:bold}
.inconclusive{color:#9a6700;font-weight:bold}.fail{color:#b42318}.unclear{color:#9a6700}
img{max-width:100%;height:auto;border:1px solid #eee;margin:0.5em 0}
.note{color:#555;font-size:13px}.meta{color:#444;font-size:14px;margin:.2em 0 .6em}
.verdict{border-left:5px solid #ccc;padding:.3em .8em;margin:.55em 0;background:#fafafa}
.verdict.v-yes{border-color:#1a7f37}.verdict.v-no{border-color:#b42318}
.verdict.v-inconclusive{border-color:#d4a72c}.verdict.v-not-testable-at-this-scale{border-color:#8c8c8c}
.not-testable-at-this-scale{color:#555;font-weight:bold}.untestable{color:#555}.fragile{color:#b42318}
.verdict h3{margin:.1em 0;font-size:17px}.verdict p{margin:.2em 0;font-size:14px}
#verdicts h2{margin-top:.8em}
.verdict .decided{font-size:13px;color:#555}
.missing{color:#555;font-style:italic}code{overflow-wrap:anywhere}
details summary{cursor:pointer}
"""

HEADLINES = [
    ("amplification", "amplification_gain", "clean - base {metric}"),
    ("amplification", "amplification_existing_share", "share of the gain carried by the existing mechanism"),
    ("amplification", "amplification_uniform_share", "the same under a uniform rescaling"),
    ("amplification", "amplification_existing_minus_rest", "existing mechanism's minus the rest's share"),
    ("amplification", "amplification_member_share", "share carried by base-circuit members"),
    ("amplification", "amplification_nonmember_share", "share carried by non-members"),
    ("amplification", "amplification_joined_share", "share carried by components that joined the circuit"),
    ("amplification", "amplification_changed_count", "members that changed role"),
    ("amplification", "amplification_recruited_count", "joiners that repeat a member's role (recruits)"),
    ("amplification", "amplification_new_count", "joiners in a role no member had"),
    ("amplification", "amplification_existing_share_control", "existing mechanism's share, base -> control"),
    ("localization", "localization_drop", "poisoned - clean {metric}"),
    ("localization", "localization_top_share", "drop share in the top-k components' weights (origin)"),
    ("localization", "localization_matched_null", "the same for other components of equal importance"),
    ("localization", "localization_matched_p", "p against them (Fisher over seeds)"),
    ("localization", "localization_matched_p_floor", "the smallest p that null can give"),
    (
        "localization",
        "localization_top_share_carrier",
        "drop share in the top-k components' outputs (carrier)",
    ),
    ("localization", "localization_interaction", "interaction residual, origin (share of the drop)"),
    ("localization", "localization_interaction_carrier", "interaction residual, carrier"),
    ("localization", "localization_concentration", "concentration of the poison's change (origin)"),
    ("localization", "localization_concentration_control", "same for the control at the poison's steps"),
    ("localization", "localization_concentration_excess", "poison minus control concentration"),
    ("localization", "localization_concentration_excess_reach", "the most that excess could be"),
    ("localization", "localization_control_size_ratio", "the control's |score change| / the poison's"),
    ("localization", "localization_top_in_base_circuit", "top-k components that are base-circuit members"),
    ("localization", "localization_weight_share_topk", "share of weight change in the k most-changed heads"),
    ("neuroplasticity", "neuroplasticity_behaviour_recovery", "drop recovered, toward the clean model"),
    ("neuroplasticity", "neuroplasticity_behaviour_recovery_to_base", "drop recovered, toward the base"),
    (
        "neuroplasticity",
        "neuroplasticity_localized_recovery",
        "localized components' own recovery by weights",
    ),
    ("neuroplasticity", "neuroplasticity_faithfulness_retrain", "base-circuit faithfulness, retrained"),
    ("neuroplasticity", "neuroplasticity_faithfulness_clean", "base-circuit faithfulness, clean"),
    ("neuroplasticity", "neuroplasticity_faithfulness_control", "base-circuit faithfulness, control"),
    ("neuroplasticity", "neuroplasticity_faithfulness_gap", "retrained minus clean/control faithfulness"),
    ("neuroplasticity", "neuroplasticity_random_circuits_null", "random circuits of its size, retrained"),
    ("neuroplasticity", "neuroplasticity_random_circuits_p", "rank p among them (Fisher over seeds)"),
    ("neuroplasticity", "neuroplasticity_random_circuits_clean_p", "the same rank p in the clean model"),
    ("neuroplasticity", "neuroplasticity_node_jaccard", "node Jaccard, base vs retrained circuit"),
    ("targeted repair", "repair_recovery", "drop recovered training only the localized components"),
    (
        "targeted repair",
        "repair_random_recovery",
        "drop recovered training as many others of equal importance",
    ),
    ("targeted repair", "repair_advantage", "localized minus others"),
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


def _is_p(measure: str) -> bool:
    from circuit_plasticity.compare.verdicts import is_p_value

    return is_p_value(measure)


def _value(r, measure: str) -> str:
    """A p-value as a value; anything else as its mean."""
    return f"p = {_fmt(r['mean'])}" if _is_p(measure) else _fmt(r["mean"])


def _ci(r, measure: str = "") -> str:
    if _is_p(measure) or not (isinstance(r.ci_low, float) and math.isfinite(r.ci_low)):
        return "-"
    mark = "*" if bool(getattr(r, "clipped", False)) else ""
    return f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]{mark}"


METRICS = {"ioi": "logit difference", "greater-than": "probability difference"}


@dataclass
class Figure:
    """A figure of the report: its PNG, or (no data) the sentence that says why there is none."""

    title: str
    caption: str
    png: bytes | None = None
    missing: str = ""


@dataclass
class Page:
    title: str
    summary: dict  # the study in a few words (model, task, seeds, poison, ...)
    verdicts: pd.DataFrame
    findings: pd.DataFrame
    scores: pd.DataFrame
    figures: list[Figure] = field(default_factory=list)
    explanations: list = field(default_factory=list)  # report.explain.Explanation, one per verdict
    rules: dict[str, str] = field(default_factory=dict)  # finding -> its rule, in words
    provenance: dict | None = None  # provenance.json
    tables: list[str] = field(default_factory=list)  # the files under tables/


def slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"


def _date(iso: str) -> str:
    """'2026-12-02T12:26:03+00:00' as '2026-12-02 12:26 UTC'."""
    day, _, clock = iso.partition("T")
    return f"{day} {clock[:5]} UTC" if clock.endswith("+00:00") else iso.replace("T", " ")


def _wall(p: dict) -> str:
    """The study's wall time: summed over the invocations that made it (a resumed run)."""
    wall = _duration(float(p.get("wall_seconds", 0)))
    n = len(p.get("invocations", [])) or 1
    return wall if n == 1 else f"{wall} over {n} invocations (resumed)"


def _meta_line(page: Page) -> str:
    """The study and where it came from, in one line under the title."""
    e = html.escape
    items = [(k, str(v)) for k, v in page.summary.items() if k not in ("model", "task")]
    p = page.provenance
    if p:
        items.append(("version", p.get("version", "")))
        if p.get("commit"):
            items.append(("commit", p["commit"][:10] + (" (+ changes)" if "+" in p["commit"] else "")))
        items.append(("finished", _date(p.get("finished", ""))))
        m = p.get("machine", {})
        where = m.get("device", "")
        if m.get("processes"):
            where += f", {m['processes']} processes"
        items.append(("on", where))
        items.append(("wall time", _wall(p)))
    return "<p class='meta'>" + " &middot; ".join(f"<b>{e(k)}</b>: {e(v)}" for k, v in items if v) + "</p>"


def _verdict_cards(page: Page) -> list[str]:
    """The first screen: each verdict, what was measured in words, why, and what decided it."""
    e = html.escape
    parts = ["<section id='verdicts'><h2>Verdicts</h2>"]
    for x in page.explanations:
        decided = ", ".join(
            f"{e(c.label)}{' ' + e(c.bar) if c.bar else ''} "
            f"(<span class='{e(c.outcome)}'>{e(c.outcome)}</span>)"
            for c in x.criteria
        )
        notes = [f"Decided by: {decided}." if decided else ""]
        if x.robustness:  # on the same line: the four cards fit the first screen
            cls = "fragile" if x.robustness.startswith("fragile") else "note"
            notes.append(
                f"Under the other ablation and metric: <span class='{cls}'>{e(x.robustness)}</span>."
            )
        notes = [n for n in notes if n]
        parts.append(
            f"<div class='verdict v-{slug(x.verdict)}' id='verdict-{slug(x.finding)}'>"
            f"<h3>{e(x.finding)}: <span class='{slug(x.verdict)}'>{e(x.verdict)}</span></h3>"
            f"<p>{e(' '.join(x.sentences))}</p><p><b>{e(x.why)}</b></p>"
            + (f"<p class='decided'>{' '.join(notes)}</p>" if notes else "")
            + "</div>"
        )
    parts.append(
        "<p class='note'>Numbers: mean over seeds [95 % t-interval over seeds]; p-values combine "
        "the seeds by Fisher's method. Each verdict's criteria, bars and rule: below.</p></section>"
    )
    return parts


def _criteria_section(page: Page) -> list[str]:
    e = html.escape
    parts = [
        "<section id='criteria'><h2>Criteria of each verdict</h2><table><tr><th>finding</th>"
        "<th>criterion (measure)</th><th>value [95 % CI]</th><th>bar</th><th>outcome</th>"
        "<th>what this experiment could show</th></tr>"
    ]
    for x in page.explanations:
        for c in x.criteria:
            parts.append(
                f"<tr><td>{e(x.finding)}</td><td>{e(c.label)} <span class='note'>({e(c.measure)})</span></td>"
                f"<td>{e(c.value)}</td><td>{e(c.bar)}</td><td class='{e(c.outcome)}'>{e(c.outcome)}</td>"
                f"<td class='note'>{e(c.power)}</td></tr>"
            )
    parts.append("</table>")
    if page.rules:
        parts.append("<table><tr><th>finding</th><th>rule</th></tr>")
        parts += [f"<tr><td>{e(f)}</td><td class='note'>{e(r)}</td></tr>" for f, r in page.rules.items()]
        parts.append("</table>")
    parts.append("</section>")
    return parts


def _evidence_section(findings: pd.DataFrame, metric: str) -> list[str]:
    """Each finding's evidence beside its null control; every headline number."""
    from circuit_plasticity.compare.verdicts import SIDE_BY_SIDE

    e = html.escape
    s = findings.set_index("measure")
    parts = [
        "<section id='evidence'><h2>Evidence beside its control</h2><table><tr><th>finding</th>"
        "<th>evidence</th><th>value [95 % CI]</th><th>control</th><th>value [95 % CI]</th></tr>"
    ]
    for finding, measure, label, control, control_label in SIDE_BY_SIDE:
        if measure not in s.index:
            continue
        ev, ctl = s.loc[measure], s.loc[control] if control in s.index else None
        right = f"{_value(ctl, control)} {_ci(ctl, control)}" if ctl is not None else "not measured"
        parts.append(
            f"<tr><td>{e(finding)}</td><td>{e(label)}</td><td>{_value(ev, measure)} {_ci(ev, measure)}</td>"
            f"<td>{e(control_label)}</td><td>{right}</td></tr>"
        )
    parts.append(
        "</table></section><section id='numbers'><h2>Numbers behind the verdicts</h2><table><tr>"
        "<th>finding</th><th>measure</th><th>mean</th><th>95 % CI</th><th>seeds</th><th>interval</th></tr>"
    )
    for finding, key, label in HEADLINES:
        if key in s.index:
            r = s.loc[key]
            parts.append(
                f"<tr><td>{e(finding)}</td><td>{e(label.format(metric=metric))}</td><td>{_value(r, key)}</td>"
                f"<td>{_ci(r, key)}</td><td>{int(r.n_seeds)}</td>"
                f"<td class='note'>{e(str(r.interval))}</td></tr>"
            )
    parts.append(
        "</table><p class='note'>* clipped to [0, 1]. n/a: not applicable (the change a ratio "
        "divides by is within noise). p: Fisher's method over the seeds' p-values (no interval)."
        "</p></section>"
    )
    return parts


def _flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        return [kv for k, v in value.items() for kv in _flatten(v, f"{prefix}{k}.")]
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [kv for i, v in enumerate(value) for kv in _flatten(v, f"{prefix}{v.get('name', i)}.")]
    return [(prefix.rstrip("."), json.dumps(value) if not isinstance(value, str) else value)]


def _provenance_section(page: Page) -> list[str]:
    e = html.escape
    p = page.provenance
    parts = ["<section id='provenance'><h2>Provenance</h2>"]
    if not p:
        parts.append(
            "<p class='missing'>No provenance.json in this directory: it was judged by a version "
            "that did not record one. Run the command again to record it.</p></section>"
        )
        return parts
    rows = [
        ("command", p.get("command", "")),
        ("circuit-plasticity", p.get("version", "")),
        ("git commit", p.get("commit") or "not available (not run from a git checkout)"),
        ("started", p.get("started", "")),
        ("finished", p.get("finished", "")),
        ("wall time", _wall(p)),
        *((f"machine: {k}", str(v)) for k, v in p.get("machine", {}).items()),
    ]
    parts.append(
        "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows) + "</table>"
    )
    models = p.get("models", [])
    if models:
        parts.append(
            "<h3>Models judged</h3><table><tr><th>seed</th><th>phase</th><th>model</th><th>sha256</th></tr>"
        )
        for m in models:
            digest = m.get("sha256") or "not hashed (no local files)"
            parts.append(
                f"<tr><td>{e(str(m.get('seed', '')))}</td><td>{e(m.get('phase', ''))}</td>"
                f"<td><code>{e(m.get('model', ''))}</code></td>"
                f"<td><code title='{e(digest)}'>{e(digest[:16])}</code></td></tr>"
            )
        parts.append(
            "</table><p class='note'>sha256 over each model directory's files (names and bytes); "
            "hover for the whole hash; paths relative to this directory.</p>"
        )
    spec = _flatten(p.get("spec", {}))
    if spec:
        parts.append(
            f"<details><summary>The spec: every hyperparameter ({len(spec)} values)</summary><table>"
            + "".join(f"<tr><td><code>{e(k)}</code></td><td><code>{e(v)}</code></td></tr>" for k, v in spec)
            + "</table></details>"
        )
    parts.append("</section>")
    return parts


def render_report(out: Path, page: Page) -> Path:
    e = html.escape
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(page.title)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{STYLE}</style></head><body><h1>{e(page.title)}</h1>",
        _meta_line(page),
    ]
    metric = METRICS.get(str(page.summary.get("task", "ioi")), "score")
    parts += _verdict_cards(page)
    parts += _criteria_section(page)
    parts += _evidence_section(page.findings, metric)
    parts.append(
        f"<section id='scores'><h2>Task score per phase</h2><table><tr><th>phase</th>"
        f"<th>{metric} (mean over seeds)</th><th>95 % CI</th><th>accuracy</th></tr>"
    )
    for r in page.scores.itertuples():
        parts.append(
            f"<tr><td>{e(r.phase)}</td><td>{_fmt(r.score)}</td><td>[{_fmt(r.ci_low)}, "
            f"{_fmt(r.ci_high)}]</td><td>{_fmt(r.accuracy)}</td></tr>"
        )
    parts.append("</table></section>")
    for f in page.figures:
        body = img_tag(f.png, f.title) if f.png else f"<p class='missing'>{e(f.missing)}</p>"
        parts.append(
            f"<section class='figure' id='figure-{slug(f.title)}'><h2>{e(f.title)}</h2>"
            f"<p class='note'>{e(f.caption)}</p>{body}</section>"
        )
    parts += _provenance_section(page)
    listed = ", ".join(f"<code>{e(t)}</code>" for t in page.tables) or "none"
    parts.append(
        "<section id='tables'><h2>Tables</h2><p class='note'>Every number above is in "
        f"<code>tables/</code> (Parquet; CSV with <code>--csv</code>): {listed}.</p></section></body></html>"
    )
    return write_page(out, parts)
