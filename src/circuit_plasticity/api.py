"""The entry points that span layers: train and judge (study), then render (report). Each CLI
command that runs a study calls one of these; the CLI itself only parses, checks and prints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def run_study(spec, out: str | Path, csv: bool = False, progress: bool = True) -> Path:
    """The `run` command: train every seed, judge, collect the tables, write the report (its
    path is returned). Resumable: finished steps are skipped."""
    from circuit_plasticity.study.experiment import run_experiment, spec_summary

    out = run_experiment(spec, out, csv=csv, progress=progress)
    return render_report(out, spec_summary(spec), list(spec.seeds), csv=csv)


def judge_and_report(
    seeds: Sequence,
    out: str | Path,
    options,
    summary: dict[str, str],
    csv: bool = False,
    progress=print,
    validate: bool = True,
) -> Path:
    """`judge` the models, collect every table, write the report; returns the report's path.
    Bad input (missing models, different architectures, a model given twice) fails before any
    file is written."""
    from circuit_plasticity.study.judge import judge, validate_seeds

    if validate:
        validate_seeds(seeds)
    out = Path(out)
    judge(seeds, out, options, progress=progress, validate=False)
    return render_report(out, summary, [s.seed for s in seeds], csv=csv)


def render_report(out: str | Path, summary: dict[str, str], seed_ids: list[int], csv: bool = False) -> Path:
    """The tables of a judged directory gathered under tables/, and report/index.html."""
    from circuit_plasticity.report.build import build_report, collect_tables

    out = Path(out)
    collect_tables(out, seed_ids, csv=csv)
    return build_report(out, summary, seed_ids)
