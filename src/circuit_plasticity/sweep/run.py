"""`circuit-plasticity sweep`: validate every point, run the unfinished ones on an executor,
then collect the sweep table and write the sweep report.

Sweep directory:
  sweep.json                 the validated sweep: every point's name, overrides and spec
  points/<name>/             an ordinary run directory per point (docs/run-directory.md)
  tables/sweep.parquet       every point's findings (overrides as columns)
  tables/sweep_verdicts.parquet
  report/index.html          dose-response figures, links to each point's report
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from circuit_plasticity.errors import UserError
from circuit_plasticity.locks import claim_directory, has_files, writes_directory
from circuit_plasticity.sweep.executors import Job, job_cpus
from circuit_plasticity.sweep.spec import Sweep

EXECUTORS = ("local", "ray")


def point_dir(out: Path, name: str) -> Path:
    return out / "points" / name


def is_finished(run_dir: Path) -> bool:
    """A point is done when run_study got to its end: the report is its last write."""
    return all(
        (run_dir / rel).is_file()
        for rel in ("tables/findings.parquet", "tables/verdicts.parquet", "report/index.html")
    )


def _check_same_sweep(out: Path, sweep: Sweep) -> None:
    from circuit_plasticity.spec import same_spec
    from circuit_plasticity.study.experiment import ExperimentSpec

    saved_path = out / "sweep.json"
    if not saved_path.is_file():
        if has_files(out):
            raise UserError(f"{out} exists and is not a sweep directory (no sweep.json); use another --out")
        return
    saved = {p["name"]: p["spec"] for p in json.loads(saved_path.read_text())["points"]}
    mine = {p.name: p.spec for p in sweep.points}
    differ = sorted(set(saved) ^ set(mine)) or [
        n for n in mine if not same_spec(ExperimentSpec, saved[n], mine[n])
    ]
    if differ:
        raise UserError(
            f"{out} holds a different sweep (points differ: {', '.join(differ[:5])}); "
            "use another --out or delete it"
        )


def _check_models(sweep: Sweep, out: Path) -> None:
    """Fail on an unusable model, task or year range before any point starts (as `run` does),
    once per distinct (model, task, years) among the points not yet started."""
    from circuit_plasticity.study.experiment import check_model_usable

    seen = set()
    for point in sweep.points:
        key = (point.spec.model, point.spec.task, tuple(point.spec.years or ()))
        if key not in seen and not point_dir(out, point.name).exists():
            seen.add(key)
            check_model_usable(point.spec)


@writes_directory("out")
def run_sweep(
    sweep: Sweep,
    out: str | Path,
    executor: str = "local",
    address: str | None = None,
    csv: bool = False,
    parallel: int = 0,
    gpus_per_point: float = 0.0,
    progress: bool = True,
) -> Path:
    """Every point of `sweep` into out/points/<name>/, then the sweep's tables and report.
    Finished points are skipped; an interrupted one resumes from its checkpoints."""
    from circuit_plasticity.fileio import write_json
    from circuit_plasticity.sweep import executors
    from circuit_plasticity.sweep.report import build_sweep_report
    from circuit_plasticity.sweep.results import collect_sweep

    if executor not in EXECUTORS:
        raise UserError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "ray":
        try:
            import ray  # noqa: F401 - only to say how to install it before anything is written
        except ImportError:
            raise UserError(
                f"--executor ray needs Ray, which is not installed: {executors.RAY_INSTALL}"
            ) from None
    if parallel < 0 or gpus_per_point < 0:
        raise UserError("--parallel and --gpus-per-point must be >= 0")
    out = Path(out)
    _check_same_sweep(out, sweep)
    _check_models(sweep, out)
    start = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - start:5.0f} s] {message}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    claim_directory(out)  # one writer per sweep directory
    write_json(out / "sweep.json", sweep.to_json())
    jobs = []
    for p in sweep.points:
        run_dir = point_dir(out, p.name)
        if is_finished(run_dir):
            say(f"point {p.name}: finished before, skipped")
        else:
            jobs.append(Job(p.name, p.spec_json(), run_dir, job_cpus(p.spec)))
    if executor == "ray":
        executors.run_ray(jobs, say, csv=csv, address=address, gpus_per_point=gpus_per_point)
    else:
        executors.run_local(jobs, say, csv=csv, parallel=parallel)
    tables = collect_sweep(sweep, out, csv=csv)
    say(f"sweep table: {len(sweep.points)} points, {len(tables.findings)} rows")
    return build_sweep_report(sweep, out, tables)
