"""Bring your own checkpoints: the study's analyses and verdicts on any set of models.

`judge` takes, per seed, a base, a clean fine-tune, a poisoned model (fine-tuned from the
clean one), a retrained model and optionally a control (the clean model trained on clean data
for as long as poisoning and retraining took). Models are paths or loaded models; they may come
from this tool's `train`, a Hugging Face Trainer or a script of one's own. `run` calls it on
the checkpoints it trained. Every output is written atomically and skipped when present, so a
killed judgement continues where it stopped.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from circuit_plasticity.compare.verdicts import VerdictThresholds, combine_seeds, decide, robustness
from circuit_plasticity.components import component_name
from circuit_plasticity.errors import UserError
from circuit_plasticity.fileio import read_table_or_none, write_json
from circuit_plasticity.locks import claim_directory, writes_directory

PHASES = ("base", "clean", "poisoned", "retrain", "control", "control_matched")
REQUIRED = ("base", "clean", "poisoned", "retrain")
ANALYSED = ("base", "clean", "poisoned", "retrain", "control")  # control_matched: evidence only


@dataclass
class RepairPlan:
    """Targeted repair: retrain only the localized heads (and, as the null, as many random other
    heads) from the poisoned model on the clean data the full retrain used."""

    n_train: int = 1000
    data_seed: int = 2
    data_seeds: dict[int, int] = field(default_factory=dict)  # seed -> its own retrain data seed
    epochs: int = 4
    lr: float = 3e-4
    batch_size: int = 32
    eval_every: int = 10


@dataclass
class JudgeOptions:
    n: int = 160  # held-out prompts per analysis
    k: int = 3  # components in the localized set
    n_random: int = 100  # random sets / circuits per null distribution
    null_window: int = 4  # the matched null draws each member from this many of similar importance
    thresholds: VerdictThresholds = field(default_factory=VerdictThresholds)
    repair: RepairPlan | None = None
    full_analysis: bool = True  # every phase's single-model analysis (the report's figures)
    task: str = "ioi"
    years: list[int] | None = None  # Greater-Than: [low, high] start years of the prompts
    edge_tracking_every: int = 0  # EAP-IG graphs: the finding's checkpoints, and every n-th (n >= 1)


@dataclass
class SeedModels:
    """The models of one seed. Strings are paths or model names (`load_model` reads them)."""

    seed: int
    base: Any
    clean: Any
    poisoned: Any
    retrain: Any
    control: Any = None
    control_matched: Any = None  # the control branch at the poison phase's number of steps
    checkpoints: list[tuple[str, int, Path]] = field(default_factory=list)  # for tracking
    training_metrics: pd.DataFrame | None = None  # for hysteresis

    def phases(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in PHASES if getattr(self, p) is not None}


PARENTS = {"clean": "base", "poisoned": "clean", "retrain": "poisoned", "control": "clean"}


def expand_checkpoints(s: SeedModels) -> SeedModels:
    """A phase given as several checkpoints - a list (in training order) or a Trainer output
    folder `DIR@all` - becomes its last checkpoint, every one of them tracked like `run`'s."""
    import dataclasses
    import re

    from circuit_plasticity.models.layouts import checkpoint_list, resolve, split_selector

    tracked = list(s.checkpoints)
    finals: dict[str, Any] = {}
    for phase, model in s.phases().items():
        steps: list[tuple[int, Path]] | None = None
        if isinstance(model, list | tuple):
            if not model:
                raise UserError(f"seed {s.seed}: the {phase} phase is an empty list of checkpoints")
            steps = []
            for i, m in enumerate(model):
                hit = re.search(r"checkpoint-(\d+)/?$", str(m))
                steps.append((int(hit.group(1)) if hit else i + 1, Path(resolve(str(m)))))
        elif isinstance(model, str) and (found := checkpoint_list(model)) is not None:
            steps = found
        if steps is None:
            if isinstance(model, str) and split_selector(model)[1] is not None:
                finals[phase] = resolve(model)  # DIR@last, DIR@N: that one folder
            continue
        if phase == "base":
            raise UserError(f"seed {s.seed}: the base is one model, not a list of checkpoints")
        finals[phase] = resolve(model) if isinstance(model, str) else str(steps[-1][1])
        tracked += [(phase, step, path) for step, path in steps]
    if not finals:
        return s
    return dataclasses.replace(s, **finals, checkpoints=tracked)  # type: ignore[arg-type]


def describe_model(model: Any) -> str:
    """A model as messages and the report name it: its path or name."""
    return str(model) if isinstance(model, str | Path) else getattr(model, "name", type(model).__name__)


def _signature(loaded) -> tuple:
    cfg = loaded.model.cfg
    return (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_vocab)


def validate_seeds(seeds: Sequence[SeedModels]) -> None:
    """Every model loads, all share one architecture and tokenizer, none is given twice in a
    seed. Raises UserError before anything is written."""
    from circuit_plasticity.models.load import LoadedModel, load_model

    if not seeds:
        raise UserError("judge needs at least one set of models (base, clean, poisoned, retrain)")
    seeds = [expand_checkpoints(s) for s in seeds]
    if len({s.seed for s in seeds}) != len(seeds):
        raise UserError("judge: two model sets share a seed number; give each its own")
    reference = None
    for s in seeds:
        given = s.phases()
        missing = [p for p in REQUIRED if p not in given]
        if missing:
            raise UserError(f"seed {s.seed}: missing the {', '.join(missing)} model (--{missing[0]})")
        keys: dict[str, str] = {}
        for phase, model in given.items():
            key = str(Path(model).resolve()) if isinstance(model, str | Path) else f"object:{id(model)}"
            if key in keys:
                raise UserError(
                    f"seed {s.seed}: the {keys[key]} and {phase} models are the same model "
                    f"({describe_model(model)}); each phase needs its own checkpoint"
                )
            keys[key] = phase
        for phase, model in given.items():
            loaded = model if isinstance(model, LoadedModel) else load_model(str(model))
            vocab = loaded.tokenizer.backend.get_vocab()
            sig = (_signature(loaded), len(vocab), hash(frozenset(vocab.items())))
            if reference is None:
                reference = (sig, f"seed {s.seed} {phase} ({describe_model(model)})")
            elif sig[0] != reference[0][0]:
                raise UserError(
                    f"seed {s.seed} {phase} ({describe_model(model)}) has architecture (layers, heads, "
                    f"d_model, vocab) {sig[0]}, but {reference[1]} has {reference[0][0]}; "
                    "all models must be fine-tunes of one architecture"
                )
            elif sig[1:] != reference[0][1:]:
                raise UserError(
                    f"seed {s.seed} {phase} ({describe_model(model)}) has a different tokenizer from "
                    f"{reference[1]}; all models must share one tokenizer"
                )


@dataclass
class Judgement:
    by_seed: pd.DataFrame  # seed, measure, value, ci_low, ci_high (bootstrap over prompts)
    summary: pd.DataFrame  # measure, mean, ci_low, ci_high, n_seeds, interval, clipped
    verdicts: pd.DataFrame  # finding, verdict, reason, criteria, power, rule, robustness
    out: Path
    methods: pd.DataFrame | None = None  # the same verdicts under every other method (`method`)


@writes_directory("out")
def judge(
    seeds: Sequence[SeedModels],
    out: str | Path,
    options: JudgeOptions | None = None,
    progress: Callable[[str], None] | None = print,
    validate: bool = True,
    redo: bool = False,
) -> Judgement:
    """Analyses, evidence and verdicts of every seed, aggregated; writes tables/ under `out`.
    The inputs are recorded in `out`/judge.json: a rerun with other models or options is
    refused, or with `redo` makes again what depends on them (study/inputs.py).
    `progress` gets each stage's message under a bar with the time left (None: silent)."""
    from itertools import accumulate

    from circuit_plasticity.fileio import write_table
    from circuit_plasticity.study.inputs import check_inputs
    from circuit_plasticity.study.progress import StageBar

    options = options or JudgeOptions()
    seeds = [expand_checkpoints(s) for s in seeds]
    if validate:
        validate_seeds(seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    claim_directory(out)  # one writer per judged directory
    check_inputs(seeds, options, out, redo=redo)
    rows = []
    stages = [stage_count(s, options) for s in seeds]
    bar = StageBar(sum(stages), "judge", progress)
    try:
        for s, done in zip(seeds, accumulate(stages), strict=True):
            evidence = judge_seed(s, out / "seeds" / f"seed-{s.seed}", options, bar)
            bar.done_through(done)
            rows.append(evidence.assign(seed=s.seed))
    finally:
        bar.close()
    from circuit_plasticity.study.edge_tracking import (
        PAIR_COLUMNS,
        SEED_PAIR_PREFIX,
        seed_pair_findings,
        seed_pair_rows,
    )

    compare_dirs = {s.seed: out / "seeds" / f"seed-{s.seed}" / "compare" for s in seeds}
    pairs = seed_pair_rows(compare_dirs)
    rows.append(seed_pair_findings(compare_dirs, pairs))
    every = pd.concat(rows, ignore_index=True)[["seed", "method", "measure", "value", "ci_low", "ci_high"]]
    t = options.thresholds
    by_method, criteria = {}, []
    summaries = []
    for method, group in every.groupby("method", sort=False):
        summary = combine_seeds(group.drop(columns="method"), t.min_seeds)
        by_method[method] = decide(summary, t, len(seeds), criteria if method == "main" else None)
        summaries.append(summary.assign(method=method))
    per_seed = (every.method == "main") & ~every.measure.str.startswith(SEED_PAIR_PREFIX)
    by_seed = every[per_seed].drop(columns="method").reset_index(drop=True)  # pairs: their own table
    summary = summaries[0].drop(columns="method")
    verdicts = by_method.pop("main")
    verdicts["robustness"] = robustness(verdicts, by_method)
    write_table(out / "tables" / "findings_by_seed.parquet", by_seed)
    write_table(out / "tables" / "edge_seed_pairs.parquet", pd.DataFrame(pairs, columns=PAIR_COLUMNS))
    write_table(out / "tables" / "findings.parquet", summary)
    write_table(out / "tables" / "findings_methods.parquet", pd.concat(summaries, ignore_index=True))
    write_table(out / "tables" / "verdicts.parquet", verdicts)
    write_table(out / "tables" / "verdict_criteria.parquet", pd.DataFrame(criteria))
    methods = pd.concat([v.assign(method=m) for m, v in by_method.items()], ignore_index=True)
    write_table(out / "tables" / "verdicts_methods.parquet", methods)
    return Judgement(by_seed, summary, verdicts, out, methods)


def _products_whole(s: SeedModels, seed_dir: Path, options: JudgeOptions) -> bool:
    """Whether the per-head tables `judge_seed` writes beside its evidence are all there and
    readable: one deleted or damaged is made again with the evidence, not silently missing."""
    from circuit_plasticity.fileio import completion_problem, warn

    compare = seed_dir / "compare"
    problem = completion_problem(compare)  # a table changed or lost since the seed was judged
    if problem is not None:
        warn(f"{problem}; judging seed {s.seed} again (its analyses are kept)")
        return False
    names = ["cmap", "weights", "localization_heads"] if options.full_analysis else []
    names += ["tracking"] if s.checkpoints else []
    missing = [compare / f"{name}.parquet" for name in names if not (compare / f"{name}.parquet").is_file()]
    for path in missing:
        warn(f"{path} is missing; making it again")
    return not missing and all(read_table_or_none(compare / f"{name}.parquet") is not None for name in names)


def stage_count(s: SeedModels, options: JudgeOptions) -> int:
    """The stages `judge_seed` announces: each analysed phase's analysis, the evidence under
    each of the three methods, the two repairs, the per-head tables (the progress bar's length)."""
    analyses = len([p for p in s.phases() if p in ANALYSED]) if options.full_analysis else 2
    return analyses + 3 + 1 + (2 if options.repair is not None else 0)


def judge_seed(s: SeedModels, seed_dir: Path, options: JudgeOptions, progress) -> pd.DataFrame:
    """All evidence of one seed as rows (method, measure, value, ci_low, ci_high); cached."""
    path = seed_dir / "compare" / "evidence.parquet"
    cached = read_table_or_none(path)
    if cached is not None and "method" in cached.columns and _products_whole(s, seed_dir, options):
        return cached
    from circuit_plasticity.compare.evidence import METHODS, PhaseRuns
    from circuit_plasticity.fileio import write_table
    from circuit_plasticity.models.load import LoadedModel, load_model
    from circuit_plasticity.study.findings import per_head_tables, scalar_findings

    loaded = {p: m if isinstance(m, LoadedModel) else load_model(str(m)) for p, m in s.phases().items()}
    batch = seed_batch(loaded["base"], options, s.seed)
    runs = PhaseRuns({p: m.model for p, m in loaded.items()}, batch)
    extra_controls = size_matched_control(s, runs)
    reference = float(runs.s("base").mean())
    analysed = {p: m for p, m in loaded.items() if p in ANALYSED}
    analyses = analyse_phases(
        analysed, batch, seed_dir / "analysis", options.full_analysis, s.seed, progress, reference
    )
    rows, extra, main = [], {}, None
    repaired = None
    for method in METHODS:
        progress(f"seed {s.seed}: evidence and controls ({method.name})")
        found = method_evidence(runs, analyses, options, s.seed, method)
        if main is None:
            main = found
            extra = found.names() | extra_controls
            if options.repair is not None:
                repaired = _repair(s, seed_dir, found.localization.top, runs, options, progress)
                if isinstance(repaired, str):
                    extra["repair_skipped"] = repaired
                else:
                    from circuit_plasticity.training.masking import frozen_kv_heads

                    # grouped-query attention: these heads trained Q and O only (their K/V is shared)
                    names = [component_name(h) for h in found.localization.top]
                    extra["repair_heads_kv_frozen"] = ",".join(
                        frozen_kv_heads(runs.models["poisoned"], names)
                    )
        measures = found.measures
        if repaired is not None and not isinstance(repaired, str):
            from circuit_plasticity.compare.evidence import repair_evidence

            measures |= repair_evidence(runs, *repaired, s.seed, method)
        rows += [
            {"method": method.name, "measure": k, "value": v.value, "ci_low": v.low, "ci_high": v.high}
            for k, v in measures.items()
        ]
    progress(f"seed {s.seed}: per-head tables and tracking")
    scalars = scalar_findings(s, analysed, runs, analyses, main.localization, seed_dir, options)
    if options.full_analysis:  # the report's per-component figures
        per_head_tables(analysed, runs, main, seed_dir / "compare")
    rows += [
        {"method": "main", "measure": k, "value": float(v), "ci_low": np.nan, "ci_high": np.nan}
        for k, v in scalars.items()
    ]
    table = pd.DataFrame(rows)
    main_rows = table[table.method == "main"]
    write_json(
        seed_dir / "compare" / "findings.json",
        {**extra, **{r.measure: r.value for r in main_rows.itertuples()}},
    )
    write_table(path, table)
    from circuit_plasticity.fileio import mark_complete

    mark_complete(seed_dir / "compare")  # last: every table of the seed with its hash
    return table


def _step(path) -> int | None:
    name = Path(str(path)).name
    return int(name.split("-")[1]) if name.startswith("step-") and name[5:].isdigit() else None


def size_matched_control(s: SeedModels, runs) -> dict[str, str]:
    """Which control the poison is held against, in words; and, where the control branch kept
    a checkpoint whose |score change| from clean is at least half the poison's, that checkpoint
    as `control_sized` in `runs` (a benign change matched in size, reported beside)."""
    from circuit_plasticity.analysis.metrics import evaluate
    from circuit_plasticity.models.load import load_model

    poison_steps = _step(s.poisoned)
    matched = s.control_matched or s.control
    out = {
        "localization_control": (
            f"control at step {_step(matched)} (the poison's {poison_steps} steps)"
            if s.control_matched is not None
            else f"the final control ({_step(matched) or '?'} steps; the poison: {poison_steps or '?'})"
        )
        if matched is not None
        else "no control given"
    }
    drop = abs(float((runs.s("poisoned") - runs.s("clean")).mean()))
    best, best_ratio = None, 0.0
    for phase, _, path in s.checkpoints:
        if phase != "control":
            continue
        model = load_model(str(path)).model
        change = abs(float(evaluate(model, runs.batch)["score"].mean() - runs.s("clean").mean()))
        if change / max(drop, 1e-12) > best_ratio:
            best, best_ratio = (path, model), change / max(drop, 1e-12)
    out["localization_size_matched_control"] = (
        f"control at step {_step(best[0])}: its change is {best_ratio:.0%} of the poison's"
        if best is not None and best_ratio >= 0.5
        else f"none: the largest benign change the control branch made is {best_ratio:.0%} of the poison's"
    )
    if best is not None and best_ratio >= 0.5:
        runs.models["control_sized"] = best[1]
    return out


@dataclass
class MethodEvidence:
    """One method's evidence of one seed, and the component sets it chose."""

    measures: dict
    localization: Any  # compare.localization.LocalizationResult
    mechanism: dict  # compare.amplification.mechanism_sets of base -> clean
    recovered: dict  # localized component -> its own recovery by weights

    def names(self) -> dict[str, str]:
        """The components a person reads about: localized, carriers, the mechanism's sets."""
        join = lambda cs: ",".join(map(component_name, cs))  # noqa: E731
        out = {
            "localization_top_heads": join(self.localization.top),
            "localization_top_carrier": join(self.localization.top_carrier),
        }
        out |= {f"amplification_{k}": join(v) for k, v in self.mechanism.items()}
        out["neuroplasticity_recovery_by_component"] = ",".join(
            f"{name}={value:.3g}" for name, value in self.recovered.items()
        )
        return out


def method_evidence(runs, analyses: dict, options: JudgeOptions, seed: int, method) -> MethodEvidence:
    """Amplification, localization and neuroplasticity evidence of one seed under `method`."""
    from circuit_plasticity.compare.amplification import amplification_evidence
    from circuit_plasticity.compare.localization import localization_evidence
    from circuit_plasticity.compare.plasticity import plasticity_evidence

    t = options.thresholds
    measures, mechanism = amplification_evidence(runs, analyses["base"], analyses, seed, method)
    loc = localization_evidence(
        runs, options.k, options.n_random, seed, method, options.null_window, t.null_margin
    )
    measures |= loc.measures
    base_circuit = analyses["base"].head_set()
    plastic, recovered = plasticity_evidence(
        runs, base_circuit, loc.top, options.n_random, seed, method, t.faithfulness_tolerance
    )
    measures |= plastic
    return MethodEvidence(measures, loc, mechanism, recovered)


def analyse_phases(
    loaded: dict, batch, root: Path, full: bool, seed: int, progress, reference: float
) -> dict:
    """Circuits of every phase (the base and clean ones at least), each analysis cached.

    Discovery's threshold is a share of the base model's score in every phase, so a fine-tune
    that triples the score does not lose members for that reason (docs/analysis.md);
    `reference` is the base model's mean score on `batch`."""
    from circuit_plasticity.analysis.circuit import Circuit

    circuits: dict[str, Circuit] = {}
    for phase, model in loaded.items():
        if full or phase in ("base", "clean"):
            out = root / phase
            if not analysis_done(out):
                progress(f"seed {seed}: analysing {phase}")
                analyse_phase(model, batch, out, None if phase == "base" else reference, full)
            circuits[phase] = Circuit.load(out / "circuit.json")
    return circuits


def analysis_done(out: Path) -> bool:
    """Whether the phase analysis in `out` is whole: its circuit.json, and every file its
    completion marker hashed unchanged. A damaged or missing file is named in one line and the
    analysis is made again (never skipped, never a traceback later)."""
    from circuit_plasticity.fileio import COMPLETE, completion_problem, warn

    if not (out / "circuit.json").is_file():
        return False
    problem = completion_problem(out)
    if problem is None and not (out / COMPLETE).is_file():  # written before markers: parse them
        problem = next(
            (f"{p} is not a readable table" for p in sorted(out.glob("*.parquet")) if not _parses(p)), None
        )
    if problem is not None:
        warn(f"{problem}; analysing {out.name} again")
    return problem is None


def _parses(path: Path) -> bool:
    import pyarrow.parquet as pq

    try:
        pq.ParquetFile(path).metadata  # noqa: B018 (reads the footer: a cut file fails)
    except Exception:  # noqa: BLE001
        return False
    return True


def analyse_phase(model, batch, out: Path, reference: float | None, full: bool) -> None:
    """One phase's analysis written to `out`: everything the report draws, or (not `full`) only
    the circuit the verdicts need."""
    from circuit_plasticity.analysis.discovery import DiscoveryConfig
    from circuit_plasticity.analysis.pipeline import analyze_model, circuit_of

    config = DiscoveryConfig(reference_scale=reference)
    if full:
        analysis = analyze_model(
            model, batch, discovery=config, minimality_steps=0, greedy_curve=False, mib=False
        )
        analysis.write(out)
    else:
        circuit_of(model, batch, discovery=config).save(out / "circuit.json")
    from circuit_plasticity.fileio import mark_complete

    mark_complete(out)  # last: what `analysis_done` checks on resume


def seed_batch(base, options: JudgeOptions, seed: int):
    """The held-out prompts every analysis of this seed uses."""
    from circuit_plasticity.training.evaluate import task_batch

    return task_batch(base, options.task, n=options.n, seed=20_000 + seed, split="test", years=options.years)


def reference_score(loaded, batch) -> float:
    """The base model's mean score: the scale of every phase's discovery threshold."""
    from circuit_plasticity.analysis.metrics import evaluate

    return float(evaluate(loaded.model, batch)["score"].mean())


def _repair(s: SeedModels, seed_dir: Path, heads, runs, options: JudgeOptions, progress):
    """Scores of the two repaired models (trained on `options.task`), or why repair was skipped.
    The null trains as many other components, each drawn among those of its kind nearest in
    importance to a localized one (the localization's matched null, without the localized set)."""
    from circuit_plasticity.analysis.hooks import component_labels
    from circuit_plasticity.compare.evidence import MAIN
    from circuit_plasticity.compare.localization import importance
    from circuit_plasticity.compare.nulls import matched_draws
    from circuit_plasticity.study.repair import train_heads

    if not isinstance(s.poisoned, str | Path):
        return "targeted repair needs the poisoned model as a path"
    others = [h for h in component_labels(runs.models["poisoned"]) if h not in heads]
    weights = importance(runs, MAIN)
    random_heads = matched_draws(random.Random(s.seed), others, weights, heads, 1, options.null_window)[0]
    scores = []
    for name, chosen in (("repair", heads), ("repair-random", random_heads)):
        progress(f"seed {s.seed}: {name} (training only {', '.join(map(component_name, chosen))})")
        result = train_heads(
            str(s.poisoned),
            [component_name(h) for h in chosen],
            options.repair,
            seed_dir / name,
            s.seed,
            options.task,
            options.years,
        )
        if isinstance(result, str):
            return result
        scores.append(_scores_of(result, runs.batch))
    return tuple(scores)


def _scores_of(path: Path, batch) -> dict[str, np.ndarray]:
    """The repaired model's per-prompt scores under every metric the methods use."""
    from circuit_plasticity.analysis.metrics import METRICS, evaluate
    from circuit_plasticity.compare.stats import as_numpy
    from circuit_plasticity.models.load import load_model

    model = load_model(str(path)).model
    return {m: as_numpy(evaluate(model, batch.with_metric(m))["score"]) for m in METRICS}


def read_seed_file(path: str | Path) -> list[SeedModels]:
    """A YAML/JSON list of {seed, base, clean, poisoned, retrain, control} mappings; a phase
    may be a list of checkpoints in training order (tracked; the last is judged)."""
    from circuit_plasticity.spec import load_yaml

    data = load_yaml(path)
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: must be a non-empty list of mappings with base, clean, poisoned, retrain")
    seeds = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise UserError(f"{path}: item {i} must be a mapping, got {type(item).__name__}")
        unknown = set(item) - set(PHASES) - {"seed"}
        if unknown:
            raise UserError(
                f"{path}: item {i}: unknown keys {sorted(unknown)}; valid: seed, {', '.join(PHASES)}"
            )
        seeds.append(SeedModels(seed=int(item.get("seed", i)), **{p: item.get(p) for p in PHASES}))
    return seeds


def seeds_from_options(
    base: list[str], clean: list[str], poisoned: list[str], retrain: list[str], control: list[str]
) -> list[SeedModels]:
    """Repeated CLI options, one per seed; a single base (or control) is shared by all seeds."""
    n = max(len(clean), len(poisoned), len(retrain), len(base), 1)

    def per_seed(values: list[str], name: str, optional: bool = False) -> list[str | None]:
        if not values:
            if optional:
                return [None] * n
            raise UserError(f"judge: --{name} is missing (the {name} model of each seed)")
        if len(values) == 1 and name in ("base",):
            return values * n
        if len(values) != n:
            raise UserError(f"judge: {len(values)} --{name} models for {n} seeds; give one per seed")
        return list(values)

    b, c, p, r = (
        per_seed(v, k)
        for v, k in ((base, "base"), (clean, "clean"), (poisoned, "poisoned"), (retrain, "retrain"))
    )
    x = per_seed(control, "control", optional=True)
    from circuit_plasticity.models.layouts import split_selector

    for values in (b, c, p, r, x):
        for v in values:
            if v is not None and not Path(split_selector(v)[0]).exists() and "/" in v:
                raise UserError(f"judge: model {v} does not exist")
    return [
        SeedModels(seed=i, base=b[i], clean=c[i], poisoned=p[i], retrain=r[i], control=x[i]) for i in range(n)
    ]
