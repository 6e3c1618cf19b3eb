"""Where each point's `run_study` runs: a local process pool or Ray tasks. The executors
decide only placement; a point is always `run_point`, so every point directory is an ordinary
run directory made by the same code as `circuit-plasticity run`.

Sizing: a point already spreads its seeds over `study_workers(spec)` processes, so a point
claims that many cores. The local pool runs cores // (that) points at once (points x workers
<= cores: two 1-seed points on two cores, or one 3-seed point on two processes); each Ray task
asks for that many CPUs and Ray packs them onto the cluster the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from circuit_plasticity.errors import UserError
from circuit_plasticity.locks import die_with_parent
from circuit_plasticity.study.experiment import study_workers

RAY_INSTALL = "pip install 'circuit-plasticity[ray]'"


@dataclass
class Job:
    """One point to run: its name, validated spec (as JSON) and directory."""

    name: str
    spec_json: dict
    out: Path
    cpus: int


def run_point(spec_json: dict, out: str, csv: bool = False) -> float:
    """One point, in whatever process the executor chose: the whole study into `out`
    (resumed if it holds part of one). Torch threads: `run_study` sets the study's one rule
    (`study.experiment.STUDY_THREADS`), as for `run`, so a point gives the same bytes as `run`."""
    from circuit_plasticity.api import run_study
    from circuit_plasticity.spec import from_mapping
    from circuit_plasticity.study.experiment import ExperimentSpec

    start = time.perf_counter()
    spec = from_mapping(ExperimentSpec, spec_json, source=f"{out}/experiment.json")
    run_study(spec, out, csv=csv, progress=False)
    return time.perf_counter() - start


def job_cpus(spec) -> int:
    return study_workers(spec)


def run_local(jobs: Sequence[Job], say: Callable[[str], None], csv: bool = False, parallel: int = 0) -> None:
    """Points on a spawn process pool of cores // (cores per point) processes (or `parallel`)."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    if not jobs:
        return
    cores = os.cpu_count() or 1
    size = parallel or max(1, cores // max(j.cpus for j in jobs))
    size = min(size, len(jobs))
    say(f"{len(jobs)} points on {size} local process(es), {max(j.cpus for j in jobs)} core(s) per point")
    errors: list[tuple[str, BaseException]] = []
    waiting = list(jobs)
    with ProcessPoolExecutor(size, mp_context=mp.get_context("spawn"), initializer=die_with_parent) as pool:
        running = {}
        while waiting or running:
            while waiting and len(running) < size:  # submit as cores free up: "running" is true
                job = waiting.pop(0)
                say(f"point {job.name}: running")
                running[pool.submit(run_point, job.spec_json, str(job.out), csv)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    say(f"point {job.name}: finished in {future.result():.0f} s")
                except BaseException as error:  # noqa: BLE001 - reported with the point's name below
                    say(f"point {job.name}: failed: {error}")
                    errors.append((job.name, error))
    _raise_first(errors)


def run_ray(
    jobs: Sequence[Job],
    say: Callable[[str], None],
    csv: bool = False,
    address: str | None = None,
    gpus_per_point: float = 0.0,
    temp_dir: str | None = None,
) -> None:
    """Each point a Ray task asking for its CPUs (and GPUs), on the cluster at `address` or on a
    local one started here and stopped at the end."""
    try:
        import ray
    except ImportError:
        raise UserError(f"--executor ray needs Ray, which is not installed: {RAY_INSTALL}") from None
    if not jobs:
        return
    import shutil
    import tempfile

    own_temp = None
    if address:
        say(f"connecting to the Ray cluster at {address}")
        ray.init(address=address, log_to_driver=False)
    else:
        # a short path of its own: Ray's socket paths must stay under 107 characters
        own_temp = temp_dir or tempfile.mkdtemp(prefix="cp-ray-", dir="/tmp")
        cpus = os.cpu_count() or 1
        say(f"starting a local Ray cluster ({cpus} CPUs)")
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=own_temp,
            configure_logging=False,
            # Ray starts workers at niceness 15; the points are the work here, and on a shared
            # machine a niced point waits behind every other process
            _system_config={"worker_niceness": 0},
        )
    errors: list[tuple[str, BaseException]] = []
    try:
        task = ray.remote(run_point)
        running = {}
        for job in jobs:
            ref = task.options(num_cpus=job.cpus, num_gpus=gpus_per_point, max_retries=0).remote(
                job.spec_json, str(job.out), csv
            )
            running[ref] = job
        say(f"{len(jobs)} points submitted as Ray tasks, {max(j.cpus for j in jobs)} CPU(s) each")
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                job = running.pop(ref)
                try:
                    say(f"point {job.name}: finished in {ray.get(ref):.0f} s")
                except BaseException as error:  # noqa: BLE001
                    say(f"point {job.name}: failed: {error}")
                    errors.append((job.name, error))
    finally:
        ray.shutdown()
        if own_temp and temp_dir is None:
            shutil.rmtree(own_temp, ignore_errors=True)
    _raise_first(errors)


def _raise_first(errors: list[tuple[str, BaseException]]) -> None:
    """After every point has had its chance: fail with the first failure (UserError stays one)."""
    if not errors:
        return
    names = ", ".join(name for name, _ in errors)
    name, error = errors[0]
    if isinstance(error, UserError):
        raise UserError(f"point {name}: {error} (failed points: {names})") from error
    raise RuntimeError(f"{len(errors)} point(s) failed ({names}); first: {name}: {error!r}") from error
