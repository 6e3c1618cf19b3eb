"""Compare the checkpoints of training runs: per seed, then over seeds with CIs and verdicts.

`compare_seed` analyses each phase's final weights, tracks the base circuit through every
checkpoint, and measures the three findings; `aggregate` collects all seeds into tidy tables
and a verdict per finding. Each output is written atomically and skipped when present.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.analysis.pipeline import analyze_model
from circuit_plasticity.analysis.tables import write_table
from circuit_plasticity.compare.changes import (
    amplification,
    circuit_overlap,
    localization,
    neuroplasticity,
    recovery,
)
from circuit_plasticity.compare.cmap import cross_model_patch
from circuit_plasticity.compare.stats import over_seeds
from circuit_plasticity.compare.tracking import circuit_strength, hysteresis
from circuit_plasticity.compare.weights import weight_change
from circuit_plasticity.fileio import write_json
from circuit_plasticity.models.load import LoadedModel, load_model
from circuit_plasticity.training.evaluate import task_batch
from circuit_plasticity.training.loop import RunDir

STUDY_PHASES = ("base", "clean", "poisoned", "retrain", "control")


def phase_checkpoints(run: RunDir, base_model: str) -> dict[str, str]:
    """Final weights of each finished phase (and the base model spec), in study order."""
    out = {"base": base_model}
    for phase in STUDY_PHASES[1:]:
        final = run.final_checkpoint(phase)
        if final is not None:
            out[phase] = str(final)
    return out


def all_checkpoints(run: RunDir) -> list[tuple[str, int, Path]]:
    rows = []
    for phase_dir in sorted((run.root / "phases").glob("*")):
        for ckpt in sorted(phase_dir.glob("step-*")):
            rows.append((phase_dir.name, int(ckpt.name.split("-")[1]), ckpt))
    return rows


def _cached(path: Path, make: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    if path.is_file():
        return pd.read_parquet(path)
    frame = make()
    write_table(path, frame)
    return frame


def compare_seed(
    seed_dir: Path,
    base_model: str,
    seed: int,
    n: int = 160,
    k: int = 3,
    n_random: int = 200,
    track: bool = True,
    progress: Callable[[str], None] = print,
) -> dict:
    """All comparisons of one training run; returns its headline findings (also findings.json)."""
    run = RunDir(seed_dir)
    findings_path = seed_dir / "compare" / "findings.json"
    if findings_path.is_file():
        return json.loads(findings_path.read_text())
    checkpoints = phase_checkpoints(run, base_model)
    missing = {"clean", "poisoned", "retrain"} - set(checkpoints)
    if missing:
        raise FileNotFoundError(f"{seed_dir}: phases {sorted(missing)} have not finished")
    models: dict[str, LoadedModel] = {p: load_model(c) for p, c in checkpoints.items()}
    batch = task_batch(models["base"], "ioi", n=n, seed=20_000 + seed, split="test")
    heads, circuits, metrics = {}, {}, {}
    for phase, loaded in models.items():
        out = seed_dir / "analysis" / phase
        if not (out / "circuit.json").is_file():
            progress(f"seed {seed}: analysing {phase}")
            analyze_model(loaded, batch).write(out)
        heads[phase] = pd.read_parquet(out / "heads.parquet")
        circuits[phase] = Circuit.load(out / "circuit.json")
        metrics[phase] = pd.read_parquet(out / "metrics.parquet").iloc[0].to_dict()
    wide = {
        p: h[h.measure.isin(["dla", "attn_end_io", "attn_end_s2", "knockout_effect"])]
        .pivot_table(index=["layer", "head"], columns="measure", values="value")
        .reset_index()
        for p, h in heads.items()
    }
    out_dir = seed_dir / "compare"
    base = models["base"].model
    progress(f"seed {seed}: cross-model patching, localization, tracking")
    _cached(
        out_dir / "cmap.parquet",
        lambda: pd.concat(
            [
                cross_model_patch(models[p].model, base, batch, "z", ("all", "end", "s2")).assign(source=p)
                for p in models
                if p != "base"
            ]
            + [
                cross_model_patch(models[p].model, base, batch, "pattern", ("end",)).assign(source=p)
                for p in models
                if p != "base"
            ],
            ignore_index=True,
        ),
    )
    weights = _cached(
        out_dir / "weights.parquet",
        lambda: pd.concat(
            [weight_change(models[p].model, base).assign(source=p) for p in models if p != "base"],
            ignore_index=True,
        ),
    )
    loc = localization(
        base, models["poisoned"].model, batch, circuits["base"], k=k, n_random=n_random, seed=seed
    )
    write_table(out_dir / "localization_heads.parquet", loc.per_head)
    rec = _cached(
        out_dir / "recovery.parquet",
        lambda: pd.concat(
            [
                recovery(wide["base"], wide["poisoned"], wide["retrain"], m)
                for m in ("dla", "attn_end_io", "attn_end_s2")
            ],
            ignore_index=True,
        ),
    )
    amp_table, amp = amplification(wide["base"], wide["clean"], circuits["base"], circuits["clean"])
    write_table(out_dir / "amplification.parquet", amp_table)
    if track:
        _cached(out_dir / "tracking.parquet", lambda: _track(run, models["base"], batch, circuits["base"]))
    plastic = neuroplasticity(models["retrain"].model, batch, circuits["base"], circuits["retrain"])
    train_metrics = pd.DataFrame(run.read_metrics())
    findings = _headlines(metrics, amp, loc, rec, plastic, weights, circuits, hysteresis(train_metrics), seed)
    write_json(findings_path, findings)
    return findings


def _track(run: RunDir, base: LoadedModel, batch, circuit: Circuit) -> pd.DataFrame:
    rows = [{"phase": "base", "step": 0, **circuit_strength(base.model, batch, circuit)}]
    for phase, step, ckpt in all_checkpoints(run):
        rows.append(
            {"phase": phase, "step": step, **circuit_strength(load_model(str(ckpt)).model, batch, circuit)}
        )
    return pd.DataFrame(rows)


def _headlines(metrics, amp, loc, rec, plastic, weights, circuits, hyst, seed) -> dict[str, Any]:
    score = {p: float(m["score"]) for p, m in metrics.items()}
    members = {f"{lay}.{h}" for lay, h in circuits["base"].head_set()}
    dla_rec = rec[(rec.measure == "dla")]
    member_rec = dla_rec[[f"{r.layer}.{r.head}" in members for r in dla_rec.itertuples()]].recovery
    poisoned_w = weights[weights.source == "poisoned"].sort_values("weight_change_rel", ascending=False)
    top_w = poisoned_w.weight_change_rel.head(loc.k).sum() / poisoned_w.weight_change_rel.sum()
    drop = score["base"] - score["poisoned"]
    return {
        "seed": seed,
        **{f"score_{p}": v for p, v in score.items()},
        **{f"accuracy_{p}": float(m["correct"]) for p, m in metrics.items()},
        "amplification_score_ratio": score["clean"] / score["base"],
        "amplification_members_grown": amp["members_grown"] / max(amp["circuit_members"], 1),
        "amplification_median_member_ratio": amp["median_member_ratio"],
        "amplification_heads_joined": len(amp["joined"]),
        "amplification_joined": ",".join(amp["joined"]),
        "amplification_node_jaccard": circuit_overlap(circuits["base"], circuits["clean"])["node_jaccard"],
        "localization_top_share": loc.top_share,
        "localization_random_mean": loc.random_mean,
        "localization_p_layer_matched": loc.p_value,
        "localization_any_random_mean": loc.any_random_mean,
        "localization_p_any": loc.any_p_value,
        "localization_top_in_base_circuit": loc.top_in_base_circuit,
        "localization_top_heads": ",".join(f"{lay}.{h}" for lay, h in loc.top_heads),
        "localization_weight_share_topk": float(top_w),
        "localization_uniform_weight_share": loc.k / len(poisoned_w),
        "neuroplasticity_score_recovery": (score["retrain"] - score["poisoned"]) / drop
        if drop
        else float("nan"),
        "neuroplasticity_median_member_recovery": float(member_rec.median())
        if len(member_rec)
        else float("nan"),
        **{f"neuroplasticity_{k}": v for k, v in plastic.items()},
        **{f"hysteresis_{k}": v for k, v in hyst.items()},
    }


VERDICTS = {
    "amplification": "clean fine-tuning raises the score (CI of clean/base ratio above 1) and the base "
    "circuit's members grow (median member DLA ratio above 1)",
    "localization": "the top-k heads carry at least half of the base->poisoned change and beat random "
    "k-head sets drawn from all heads (p < 0.05 in every seed)",
    "neuroplasticity": "retraining recovers at least 80 % of the poisoning drop (CI) and the base circuit "
    "keeps at least 70 % faithfulness inside the retrained model (mean)",
}


def aggregate(findings: list[dict[str, Any]], out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All seeds' findings as a long table, their means with CIs, and one verdict per finding."""
    rows = [
        {"seed": f["seed"], "measure": k, "value": v}
        for f in findings
        for k, v in f.items()
        if k != "seed" and isinstance(v, int | float)
    ]
    long = pd.DataFrame(rows)
    summary = over_seeds(long, ["measure"])
    # shares, accuracies and overlaps live in [0, 1]: a t-interval must not leave that range
    unit = summary.measure.str.startswith("accuracy_") | summary.measure.str.endswith(
        ("jaccard", "members_grown", "top_in_base_circuit")
    )
    summary.loc[unit, ["ci_low", "ci_high"]] = summary.loc[unit, ["ci_low", "ci_high"]].clip(0, 1)
    write_table(out / "findings_by_seed.parquet", long)
    write_table(out / "findings.parquet", summary)
    s = summary.set_index("measure")

    def low(m: str) -> float:
        r = s.loc[m]
        return float(r.ci_low) if r.n_seeds > 1 else float(r["mean"])

    checks = {
        "amplification": low("amplification_score_ratio") > 1
        and low("amplification_median_member_ratio") > 1,
        "localization": s.loc["localization_top_share", "mean"] >= 0.5
        and all(f["localization_p_any"] < 0.05 for f in findings),
        "neuroplasticity": low("neuroplasticity_score_recovery") >= 0.8
        and s.loc["neuroplasticity_base_circuit_faithfulness_in_retrained", "mean"] >= 0.7,
    }
    verdicts = pd.DataFrame(
        [{"finding": name, "holds": bool(ok), "rule": VERDICTS[name]} for name, ok in checks.items()]
    )
    write_table(out / "verdicts.parquet", verdicts)
    return summary, verdicts
