"""The whole study as one resumable pipeline: train every seed, analyse every checkpoint,
compare, aggregate over seeds. The YAML spec and the run directory live here.

Run directory:
  experiment.json                 the validated spec
  seeds/seed-<s>/                 a training run (training/loop.py layout) per seed
  seeds/seed-<s>/analysis/<phase>/ full single-model analysis of each phase's final weights
  seeds/seed-<s>/compare/         tracking, CMAP, localization, recovery, weights, findings.json
  tables/                         everything above over all seeds, tidy, with CIs
  report/index.html               the report (report/html.py)
Every step writes its outputs atomically and is skipped when they exist, so the same command
after a kill continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from circuit_plasticity.compare.verdicts import VerdictThresholds
from circuit_plasticity.errors import UserError
from circuit_plasticity.locks import claim_directory, die_with_parent, has_files, writes_directory
from circuit_plasticity.spec import bad
from circuit_plasticity.tasks.poison import POISONS
from circuit_plasticity.training.protocol import DataSpec, EvalSpec, LoraSpec, Phase, TrainSpec


@dataclass
class AnalysisSpec:
    n: int = 160  # held-out prompts per analysis
    track_every_checkpoint: bool = True
    localization_k: int = 3
    n_random: int = 100  # random sets / circuits per null: p resolves down to 1/101
    null_window: int = 4  # matched null: each member drawn from this many of similar importance
    edge_tracking_every: int = 0  # EAP-IG graphs: the finding's checkpoints, and every n-th (n >= 1)

    def validate(self, where: str, source: str) -> None:
        if self.edge_tracking_every < 0:
            raise bad(source, where, "edge_tracking_every must be >= 0 (0: the finding's checkpoints only)")
        if self.n < 20 or self.localization_k <= 0 or self.n_random < 10 or self.null_window < 2:
            raise bad(
                source, where, "n >= 20, localization_k >= 1, n_random >= 10 and null_window >= 2 are needed"
            )


@dataclass
class ExperimentSpec:
    model: str = "toy-ioi"
    task: str = "ioi"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    poison: str = "subject"
    fraction: float = 1.0
    n_train: int = 1000
    clean_epochs: int = 2
    poison_epochs: int = 4
    retrain_epochs: int = 4
    lr: float = 3e-4
    batch_size: int = 32
    eval_every_steps: int = 10
    checkpoint_every_steps: int = 0
    phases: list[Phase] | None = None  # a full protocol instead of the study's default
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)
    verdicts: VerdictThresholds = field(default_factory=VerdictThresholds)
    repair: bool = True  # targeted repair: retrain only the localized heads
    workers: int = 0  # processes for the seeds (0: one per core, at most one per seed)
    years: list[int] | None = None  # Greater-Than: [low, high] start years (None: 02-98)
    lora: LoraSpec | None = None  # every phase of the default protocol as LoRA adapters

    def validate(self, where: str, source: str) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise bad(source, "seeds", f"a non-empty list of distinct seeds, got {self.seeds}")
        if self.poison not in POISONS:
            raise bad(source, "poison", f"one of {POISONS}, got {self.poison!r}")
        if not 0 <= self.fraction <= 1:
            raise bad(source, "fraction", f"must lie in [0, 1], got {self.fraction}")
        for key in (
            "n_train",
            "clean_epochs",
            "poison_epochs",
            "retrain_epochs",
            "batch_size",
            "eval_every_steps",
        ):
            if getattr(self, key) <= 0:
                raise bad(source, key, f"must be positive, got {getattr(self, key)}")
        if not 0 < self.lr < 1:
            raise bad(source, "lr", f"must lie in (0, 1), got {self.lr}")
        if self.workers < 0:
            raise bad(source, "workers", f"must be >= 0 (0: one per core), got {self.workers}")
        self.train_spec(self.seeds[0]).validate("top level", source)

    def train_spec(self, seed: int) -> TrainSpec:
        """The protocol of one seed: base -> clean -> poisoned -> retrain, and the control branch."""
        if self.phases is not None:
            phases = [
                dataclasses.replace(
                    p,
                    seed=seed,
                    data=dataclasses.replace(p.data, seed=p.data.seed + 100 * seed),
                    lora=p.lora or self.lora,  # a phase's own LoRA settings win
                )
                for p in self.phases
            ]
        else:

            def phase(name, poison, epochs, offset, start_from=None) -> Phase:
                return Phase(
                    name,
                    DataSpec(
                        self.n_train, poison, self.fraction if poison else 1.0, seed=100 * seed + offset
                    ),
                    start_from=start_from,
                    epochs=epochs,
                    lr=self.lr,
                    batch_size=self.batch_size,
                    seed=seed,
                    lora=self.lora,
                )

            phases = [
                phase("clean", None, self.clean_epochs, 0),
                phase("poisoned", self.poison, self.poison_epochs, 1),
                phase("retrain", None, self.retrain_epochs, 2),
                phase("control", None, self.poison_epochs + self.retrain_epochs, 3, "clean"),
            ]
        return TrainSpec(
            model=self.model,
            task=self.task,
            seed=seed,
            checkpoint_every_steps=self.checkpoint_every_steps,
            eval=EvalSpec(every_steps=self.eval_every_steps),
            phases=phases,
            years=self.years,
        )


def load_experiment(path: str | Path | None) -> ExperimentSpec:
    from circuit_plasticity.spec import from_mapping, load_yaml

    if path is None:
        spec = ExperimentSpec()
        spec.validate("top level", "default experiment")
        return spec
    return from_mapping(ExperimentSpec, load_yaml(path), source=str(path))


STUDY_TASKS = ("ioi", "greater-than")


def check_study_phases(spec: ExperimentSpec) -> None:
    if spec.task not in STUDY_TASKS:
        raise UserError(f"the study pipeline (`run`) analyses {' and '.join(STUDY_TASKS)}; got {spec.task!r}")
    names = {p.name for p in spec.train_spec(spec.seeds[0]).phases}
    missing = {"clean", "poisoned", "retrain"} - names
    if missing:
        raise UserError(
            f"the study compares phases clean, poisoned and retrain; the spec lacks "
            f"{sorted(missing)} (rename your phases or use the default protocol)"
        )


def check_model_usable(spec: ExperimentSpec) -> None:
    """A UserError when the spec's model cannot load or its tokenizer cannot form the task's
    prompts (single-token names, two-digit years in the range): before anything is written."""
    from circuit_plasticity.models.load import load_model
    from circuit_plasticity.training.evaluate import task_batch
    from circuit_plasticity.training.loop import check_spec_fits
    from circuit_plasticity.training.masking import component_count

    loaded = load_model(spec.model)
    task_batch(loaded, spec.task, n=10, years=spec.years)
    check_spec_fits(spec.train_spec(spec.seeds[0]), loaded)
    if spec.analysis.localization_k > (count := component_count(loaded)):
        raise UserError(
            f"analysis.localization_k is {spec.analysis.localization_k}, but {spec.model} has only "
            f"{count} heads and MLPs; use at most {count}"
        )


STUDY_THREADS = 1  # torch threads in every process of a study: `run`, its workers, a sweep point


def with_study_threads(function):
    """Decorator: the call runs torch with `STUDY_THREADS` threads (restored after). Float
    reductions depend on the thread count, so `run` in-process, its pool workers and a sweep
    point on either executor all use this one setting, and the same spec gives the same bytes."""
    import functools

    @functools.wraps(function)
    def call(*args, **kwargs):
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(STUDY_THREADS)
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_num_threads(before)

    return call


@writes_directory("out")
@with_study_threads
def run_experiment(spec: ExperimentSpec, out: str | Path, csv: bool = False, progress: bool = True) -> Path:
    """Train every seed and judge the checkpoints into `out` (returned); `api.run_study` adds
    the report. Resumable: finished steps are skipped."""
    import json

    from circuit_plasticity.fileio import write_json
    from circuit_plasticity.spec import same_spec
    from circuit_plasticity.training.loop import run_protocol

    check_study_phases(spec)
    out = Path(out)
    if has_files(out) and not (out / "experiment.json").is_file():
        raise UserError(f"{out} is not empty and holds no study (no experiment.json); use another --out")
    check_model_usable(spec)  # an unusable model, tokenizer or spec names: before anything is written
    out.mkdir(parents=True, exist_ok=True)
    claim_directory(out)  # one writer per run directory
    mine = json.loads(json.dumps(dataclasses.asdict(spec)))
    saved = out / "experiment.json"
    if saved.is_file() and not same_spec(ExperimentSpec, json.loads(saved.read_text()), spec):
        raise UserError(f"{out} holds a different experiment; use another --out or delete it")
    write_json(saved, mine)
    import time

    start = time.perf_counter()

    def say(message: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - start:5.0f} s] {message}", flush=True)

    workers = study_workers(spec)
    if workers > 1:
        say(f"{len(spec.seeds)} seeds on {workers} processes")
        _run_parallel(spec, mine, out, workers, say if progress else None)
    else:
        for seed in spec.seeds:
            say(f"seed {seed}: training")
            run_protocol(spec.train_spec(seed), out / "seeds" / f"seed-{seed}", progress=progress)
    return judge_runs(spec, out, csv=csv, progress=say if progress else None)  # None: no bar


def _run_parallel(spec: ExperimentSpec, mine: dict, out: Path, workers: int, say=None) -> None:
    """Seeds and their phases' analyses as tasks on a process pool, each started as soon as
    what it needs is on disk: train a seed -> analyse each of its phases -> judge it. With
    three seeds on two cores no core waits for a whole seed to finish."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm import tqdm

    from circuit_plasticity.study.findings import STUDY_PHASES

    # one bar over every task (train, each phase's analysis, judge, tables per seed), time left
    bar = tqdm(
        total=len(spec.seeds) * (len(STUDY_PHASES) + 3), desc="study", unit="task", disable=say is None
    )

    def line(message: str) -> None:  # a line above the bar
        if say is not None:
            with bar.external_write_mode():
                say(message)

    with (
        bar,
        ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=die_with_parent) as pool,
    ):
        running = {pool.submit(_task, mine, str(out), "train", seed): ("train", seed) for seed in spec.seeds}
        left = {seed: 0 for seed in spec.seeds}
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for job in done:
                kind, seed = running.pop(job)
                job.result()  # a failure in a worker fails the run here, with its message
                bar.set_postfix_str(f"seed {seed}: {kind} done", refresh=False)
                bar.update(1)
                if kind == "train":
                    line(f"seed {seed}: trained")
                    phases = [p for p in STUDY_PHASES if _has_phase(out, seed, p)]
                    left[seed] = len(phases)
                    bar.total -= len(STUDY_PHASES) - len(phases)
                    line(f"seed {seed}: analyses of {', '.join(phases)} queued")
                    for phase in phases:
                        running[pool.submit(_task, mine, str(out), f"analyse:{phase}", seed)] = (
                            "analyse",
                            seed,
                        )
                elif kind == "analyse":
                    left[seed] -= 1
                    if left[seed] == 0:  # the verdicts' evidence, and beside it the report's tables
                        line(f"seed {seed}: evidence, controls and repair")
                        running[pool.submit(_task, mine, str(out), "judge", seed)] = ("judge", seed)
                        running[pool.submit(_task, mine, str(out), "tables", seed)] = ("tables", seed)
                elif kind == "judge":
                    line(f"seed {seed}: judged")


def _has_phase(out: Path, seed: int, phase: str) -> bool:
    from circuit_plasticity.training.loop import RunDir

    return phase == "base" or RunDir(out / "seeds" / f"seed-{seed}").final_checkpoint(phase) is not None


def _task(spec_json: dict, out: str, kind: str, seed: int) -> None:
    """One task of the study in a worker process (one thread): train a seed, analyse one of its
    phases, or judge it. Every task writes its outputs atomically, so a killed run resumes."""
    import torch

    from circuit_plasticity.models.load import load_model
    from circuit_plasticity.spec import from_mapping
    from circuit_plasticity.study.judge import (
        analyse_phase,
        analysis_done,
        judge_seed,
        reference_score,
        seed_batch,
    )
    from circuit_plasticity.training.loop import run_protocol

    torch.set_num_threads(STUDY_THREADS)
    spec = from_mapping(ExperimentSpec, spec_json, source="experiment.json")
    seed_dir = Path(out) / "seeds" / f"seed-{seed}"
    if kind == "train":
        run_protocol(spec.train_spec(seed), seed_dir, progress=False)
    elif kind.startswith("analyse:"):
        phase = kind.split(":", 1)[1]
        target = seed_dir / "analysis" / phase
        if analysis_done(target):
            return
        models = study_seed(spec, Path(out), seed)
        base = load_model(str(models.base))
        batch = seed_batch(base, study_options(spec), seed)
        reference = reference_score(base, batch)
        model = base if phase == "base" else load_model(str(getattr(models, phase)))
        analyse_phase(model, batch, target, None if phase == "base" else reference, full=True)
    elif kind == "tables":
        from circuit_plasticity.analysis.circuit import Circuit
        from circuit_plasticity.study.findings import model_tables, track_checkpoints

        models = study_seed(spec, Path(out), seed)
        loaded = {p: load_model(str(m)) for p, m in models.phases().items()}
        batch = seed_batch(loaded["base"], study_options(spec), seed)
        model_tables(loaded, batch, seed_dir / "compare")
        circuit = Circuit.load(seed_dir / "analysis" / "base" / "circuit.json")
        track_checkpoints(models, loaded["base"], batch, circuit, seed_dir / "compare")
        from circuit_plasticity.study.edge_tracking import track_edges

        track_edges(models, loaded["base"], batch, seed_dir / "compare", spec.analysis.edge_tracking_every)
    else:
        judge_seed(study_seed(spec, Path(out), seed), seed_dir, study_options(spec), lambda *_: None)


def study_workers(spec: ExperimentSpec) -> int:
    """Processes for the seeds: `workers`, or (0) one per core, never more than the seeds."""
    import os

    wanted = spec.workers or (os.cpu_count() or 1)
    return max(1, min(wanted, len(spec.seeds)))


def judge_runs(spec: ExperimentSpec, out: Path, csv: bool = False, progress=print) -> Path:
    """The trained seeds of `out` through `judge`; returns `out`."""
    from circuit_plasticity.study.judge import judge

    seeds = [study_seed(spec, out, seed) for seed in spec.seeds]
    judge(seeds, out, study_options(spec), progress=progress, validate=False)
    return out


def study_seed(spec: ExperimentSpec, out: Path, seed: int):
    """One trained seed's phase checkpoints (and all its checkpoints, for tracking)."""
    import pandas as pd

    from circuit_plasticity.study.findings import all_checkpoints, matched_control, phase_checkpoints
    from circuit_plasticity.study.judge import SeedModels
    from circuit_plasticity.training.loop import RunDir

    run = RunDir(out / "seeds" / f"seed-{seed}")
    phases = phase_checkpoints(run, spec.model)
    missing = {"clean", "poisoned", "retrain"} - set(phases)
    if missing:
        raise UserError(f"{run.root}: phases {sorted(missing)} have not finished; rerun `run`")
    return SeedModels(
        seed=seed,
        **phases,
        control_matched=matched_control(run),
        checkpoints=all_checkpoints(run) if spec.analysis.track_every_checkpoint else [],
        training_metrics=pd.DataFrame(run.read_metrics()),
    )


def study_options(spec: ExperimentSpec):
    """The judge's options for this experiment: its analysis sizes, thresholds and repair plan."""
    from circuit_plasticity.study.judge import JudgeOptions, RepairPlan

    def retrain_of(seed: int):
        return next(p for p in spec.train_spec(seed).phases if p.name == "retrain")

    retrain = retrain_of(spec.seeds[0])
    plan = RepairPlan(
        n_train=retrain.data.n,
        data_seed=retrain.data.seed,
        data_seeds={seed: retrain_of(seed).data.seed for seed in spec.seeds},
        epochs=retrain.epochs,
        lr=retrain.lr,
        batch_size=retrain.batch_size,
        eval_every=10**9,  # evaluated at epoch ends only: the verdicts read the final weights
    )
    return JudgeOptions(
        n=spec.analysis.n,
        k=spec.analysis.localization_k,
        n_random=spec.analysis.n_random,
        null_window=spec.analysis.null_window,
        thresholds=spec.verdicts,
        repair=plan if spec.repair else None,
        task=spec.task,
        years=spec.years,
        edge_tracking_every=spec.analysis.edge_tracking_every,
    )


def seeds_from_run_dirs(runs: list[Path]) -> list:
    """Training run directories (`train`, one per seed) as the models `judge` compares."""
    import json

    import pandas as pd

    from circuit_plasticity.fileio import resolve_path
    from circuit_plasticity.study.findings import all_checkpoints, matched_control, phase_checkpoints
    from circuit_plasticity.study.judge import SeedModels
    from circuit_plasticity.training.loop import RunDir

    seeds = []
    for root in runs:
        spec_path = Path(root) / "spec.json"
        if not spec_path.is_file():
            raise UserError(
                f"{root} is not a training run directory (no spec.json); "
                "make one with `circuit-plasticity train`"
            )
        spec = json.loads(spec_path.read_text())
        run = RunDir(Path(root))
        phases = phase_checkpoints(run, resolve_path(spec["model"], run.root))
        missing = {"clean", "poisoned", "retrain"} - set(phases)
        if missing:
            raise UserError(f"{root}: phases {sorted(missing)} have not finished")
        seeds.append(
            SeedModels(
                seed=int(spec["seed"]),
                **phases,
                control_matched=matched_control(run),
                checkpoints=all_checkpoints(run),
                training_metrics=pd.DataFrame(run.read_metrics()),
            )
        )
    return seeds


def runs_task(runs: list[Path]) -> tuple[str, list[int] | None]:
    """The task (and Greater-Than start years) the training runs share; refused when they differ."""
    import json

    missing = [str(root) for root in runs if not (Path(root) / "spec.json").is_file()]
    if missing:
        raise UserError(f"not a training run (no spec.json): {', '.join(missing)}; make one with `train`")
    found = {
        (data.get("task", "ioi"), tuple(data["years"]) if data.get("years") else None)
        for data in (json.loads((Path(root) / "spec.json").read_text()) for root in runs)
    }
    if len(found) != 1:
        raise UserError(f"the runs were trained on different tasks or year ranges: {sorted(map(str, found))}")
    task, years = found.pop()
    return task, list(years) if years else None


def spec_record(spec: ExperimentSpec) -> dict:
    """Every hyperparameter of the study: the spec as given (defaults filled in) and the
    protocol it expands to (each phase's data, epochs, learning rate, ...; seed 0's seeds)."""
    import json

    protocol = spec.train_spec(spec.seeds[0])
    return json.loads(
        json.dumps({"experiment": dataclasses.asdict(spec), "protocol": dataclasses.asdict(protocol)})
    )


def spec_summary(spec: ExperimentSpec) -> dict[str, str]:
    return {
        "model": spec.model,
        "task": spec.task,
        "seeds": ", ".join(map(str, spec.seeds)),
        "poison": f"{spec.poison} ({spec.fraction:.0%})",
        "held-out prompts per analysis": str(spec.analysis.n),
    }


def cost_warning(spec: ExperimentSpec) -> str:
    """An up-front estimate for hub models on CPU, from measured per-token costs."""
    import torch

    steps = sum(
        math.ceil(p.data.n / p.batch_size) * p.epochs for p in spec.train_spec(spec.seeds[0]).phases
    ) * len(spec.seeds)
    if torch.cuda.is_available():
        return f"{spec.model}: {steps} training steps on the GPU."
    # measured here: GPT-2 small, forward+backward+AdamW ~2.1 s for 8 x 20 tokens on 2 cores
    seconds = steps * 2.1 * spec.batch_size / 8
    return (
        f"warning: {spec.model} on CPU is slow: {steps} training steps, roughly "
        f"{seconds / 3600:.1f} h of training for a GPT-2-small-sized model on 2 cores, plus analysis. "
        "Use a GPU, fewer seeds or fewer epochs for a quick look."
    )
