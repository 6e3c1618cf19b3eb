"""The entry points that span layers: train and judge (study), then render (report). Each CLI
command that runs a study calls one of these; the CLI itself only parses, checks and prints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from circuit_plasticity.locks import writes_directory


@writes_directory("out")
def run_study(spec, out: str | Path, csv: bool = False, progress: bool = True) -> Path:
    """The `run` command (and each sweep point): train every seed, judge, collect the tables,
    write the report (its path is returned). Resumable: finished steps are skipped. Torch runs
    with the study's thread count throughout (`study.experiment.with_study_threads`)."""
    from circuit_plasticity.study.experiment import with_study_threads

    return with_study_threads(_run_study)(spec, out, csv=csv, progress=progress)


def _run_study(spec, out: str | Path, csv: bool = False, progress: bool = True) -> Path:
    from circuit_plasticity.study import provenance
    from circuit_plasticity.study.experiment import (
        run_experiment,
        spec_record,
        spec_summary,
        study_seed,
        study_workers,
    )

    started, resumed = provenance.now(), (Path(out) / "experiment.json").is_file()
    out = run_experiment(spec, out, csv=csv, progress=progress)
    provenance.write_provenance(
        out,
        command="run",
        spec=spec_record(spec),
        seeds=[study_seed(spec, out, s) for s in spec.seeds],
        started=started,
        resumed=resumed,
        processes=study_workers(spec),
    )
    return render_report(out, spec_summary(spec), list(spec.seeds), csv=csv)


@writes_directory("out")
def judge_and_report(
    seeds: Sequence,
    out: str | Path,
    options,
    summary: dict[str, str],
    csv: bool = False,
    progress=print,
    validate: bool = True,
    redo: bool = False,
    command: str = "judge",
    spec: dict | None = None,
) -> Path:
    """`judge` the models, collect every table, write the report; returns the report's path.
    Bad input (missing models, different architectures, a model given twice) fails before any
    file is written. `spec` (default: the options) is recorded in provenance.json."""
    import dataclasses

    from circuit_plasticity.study import provenance
    from circuit_plasticity.study.judge import expand_checkpoints, judge, validate_seeds

    seeds = [expand_checkpoints(s) for s in seeds]
    if validate:
        validate_seeds(seeds)
    out = Path(out)
    started, resumed = provenance.now(), (out / "tables").is_dir()
    judge(seeds, out, options, progress=progress, validate=False, redo=redo)
    record = spec if spec is not None else {"options": dataclasses.asdict(options)}
    provenance.write_provenance(
        out, command=command, spec=record, seeds=list(seeds), started=started, resumed=resumed
    )
    return render_report(out, {**summary, **judged_models(seeds)}, [s.seed for s in seeds], csv=csv)


def judged_models(seeds: Sequence) -> dict[str, str]:
    """Every judged model, one summary line per seed: what the report's header lists."""
    from circuit_plasticity.study.judge import describe_model

    return {
        f"seed {s.seed} models": ", ".join(f"{p} {describe_model(m)}" for p, m in s.phases().items())
        for s in seeds
    }


def compare_runs(runs: Sequence[str | Path], out: str | Path, n: int = 160, csv: bool = False) -> Path:
    """The `compare` command: the phases of training runs made by `train` (one run directory
    per seed) judged like the study's own; returns the report's path."""
    import dataclasses
    import json

    from circuit_plasticity.study.experiment import runs_task, seeds_from_run_dirs
    from circuit_plasticity.study.judge import JudgeOptions

    runs = [Path(r) for r in runs]
    seeds = seeds_from_run_dirs(runs)
    task, years = runs_task(runs)
    first = json.loads((runs[0] / "spec.json").read_text())
    summary = {"model": str(first.get("model", "")), "task": task, "runs": ", ".join(map(str, runs))}
    options = JudgeOptions(n=n, task=task, years=years)
    spec = {
        "options": dataclasses.asdict(options),
        "runs": {str(r): json.loads((r / "spec.json").read_text()) for r in runs},
    }
    return judge_and_report(seeds, out, options, summary, csv=csv, command="compare", spec=spec)


@writes_directory("out")
def judge_models(
    seeds: Sequence,
    out: str | Path,
    *,
    n: int = 160,
    k: int = 3,
    min_seeds: int = 3,
    repair: bool = False,
    task: str = "ioi",
    csv: bool = False,
    redo: bool = False,
) -> Path:
    """The `judge` command: bring-your-own checkpoints (`study.judge.SeedModels`, one per seed)
    through the study's analyses, controls, verdicts and report; returns the report's path."""
    from circuit_plasticity.compare.verdicts import VerdictThresholds
    from circuit_plasticity.errors import UserError
    from circuit_plasticity.study.experiment import STUDY_TASKS
    from circuit_plasticity.study.judge import JudgeOptions, RepairPlan

    out = Path(out)
    from circuit_plasticity.locks import has_files

    if has_files(out) and not (out / "tables").exists() and not (out / "seeds").exists():
        raise UserError(f"{out} exists and is not a judge output; use another --out")
    if task not in STUDY_TASKS:
        raise UserError(f"--task must be one of {', '.join(STUDY_TASKS)}, got {task!r}")
    options = JudgeOptions(
        n=n,
        k=k,
        thresholds=VerdictThresholds(min_seeds=min_seeds),
        repair=RepairPlan() if repair else None,
        task=task,
    )
    if k <= 0:
        raise UserError(f"--k is the size of the localized set and must be >= 1, got {k}")
    if seeds and seeds[0].base is not None:
        _check_k(k, seeds[0].base)
    summary = {"model": str(seeds[0].base), "task": task, "seeds": str(len(seeds))}
    return judge_and_report(seeds, out, options, summary, csv=csv, redo=redo)


def _check_k(k: int, base) -> None:
    """--k at most the model's heads and MLPs (more would report shares above 100 %)."""
    from circuit_plasticity.errors import UserError
    from circuit_plasticity.models.load import LoadedModel, load_model
    from circuit_plasticity.training.masking import component_count

    loaded = base if isinstance(base, LoadedModel) else load_model(str(base))
    if k > (count := component_count(loaded)):
        raise UserError(
            f"--k is {k}, but the base model has only {count} heads and MLPs; use at most {count}"
        )


def render_report(out: str | Path, summary: dict[str, str], seed_ids: list[int], csv: bool = False) -> Path:
    """The tables of a judged directory gathered under tables/, and report/index.html."""
    from circuit_plasticity.report.build import build_report, collect_tables

    out = Path(out)
    collect_tables(out, seed_ids, csv=csv)
    return build_report(out, summary, seed_ids)
