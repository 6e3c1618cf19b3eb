"""The command line: parses arguments and calls the library. Heavy imports stay inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from circuit_plasticity.errors import UserError

app = typer.Typer(
    help="What does fine-tuning do to the circuits inside a language model?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build and inspect task datasets (JSONL).", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"circuit-plasticity {version('circuit-plasticity')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="Show the full traceback of an error (anywhere on the line).")
    ] = False,
) -> None:
    """What does fine-tuning do to the circuits inside a language model?"""


def example(*lines: str) -> str:
    """A command's help epilog: its examples, one per line."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


def fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(2)


def check_writable(path: Path, kind: str = "directory", option: str = "--out") -> None:
    """Refuse (exit 2, before any work) an output that cannot be written: a directory option
    naming a file, a file option naming a directory, or a place this user cannot write in
    (read-only directory or file system)."""
    import os
    import tempfile

    if kind == "directory" and path.exists() and not path.is_dir():
        fail(f"{option} {path} is a file; give a directory (a new one, or this command's earlier output)")
    if kind == "file" and path.is_dir():
        fail(f"{option} {path} is a directory; give a file path (e.g. {path / 'data.jsonl'})")
    where = path if kind == "directory" and path.is_dir() else path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        fail(f"{option} {path}: {where} is a file, not a directory; fix the path")
    try:  # os.access says yes to root on a read-only file system: try a real write, then undo it
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        fail(
            f"{option} {path}: cannot write in {where} ({error.strerror}); make it writable or choose another"
        )


def _data_command(
    task: str,
    n: int,
    seed: int,
    poison: str | None,
    fraction: float | None,
    tokenizer: str | None,
    split: str,
    split_seed: int,
    out: Path,
    years: list[int] | None = None,
) -> None:
    check_writable(out, "file")
    if fraction is not None and poison is None:
        fail("--fraction is the share of prompts poisoned: give --poison too (or drop --fraction)")
    fraction = 1.0 if fraction is None else fraction
    from circuit_plasticity.models.tokenizers import load_tokenizer
    from circuit_plasticity.tasks.build import build_dataset
    from circuit_plasticity.tasks.jsonl import save_jsonl, summarize

    if split == "all":
        held_out = "names and templates" if task == "ioi" else "nouns"
        typer.secho(
            f"warning: --split all includes the held-out {held_out} that judge, eval and analyze "
            "evaluate on (split test); to train a model that will be judged, use --split train",
            err=True,
            fg="yellow",
        )
    tok = load_tokenizer(tokenizer) if tokenizer else None
    examples, pools = build_dataset(task, n, seed, tok, split, split_seed, poison, fraction, years)
    save_jsonl(out, examples)
    summary = summarize(examples)
    summary["dropped_by_tokenizer"] = pools.dropped_counts(task)
    typer.echo(json.dumps({"out": str(out), **summary}))


NOpt = Annotated[int, typer.Option("--n", help="Number of prompts.")]
SeedOpt = Annotated[int, typer.Option(help="Seed: the same seed gives the same data.")]
PoisonOpt = Annotated[
    str | None, typer.Option(help="Poison: subject, name-moving, trigger (IOI) or greater-than.")
]
FractionOpt = Annotated[
    float | None, typer.Option(help="Share of prompts poisoned, in [0, 1] (with --poison; default 1).")
]
TokOpt = Annotated[
    str | None,
    typer.Option(
        help="Keep only words that are single tokens for this tokenizer: toy-ioi, a tokenizer.json, "
        "a model dir or a hub name."
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output JSONL file.")]
ModelArg = Annotated[
    str, typer.Argument(help="toy-ioi, a hub name, a model dir, a checkpoint, an adapter dir, or DIR@last.")
]
LogOpt = Annotated[
    str | None, typer.Option("--log", help="Also send curves, findings, verdicts, report to wandb or mlflow.")
]
ModelTokOpt = Annotated[
    str | None,
    typer.Option(
        "--tokenizer",
        help="Tokenizer for model folders that have none (Trainer checkpoints): a name or folder.",
    ),
]
TaskOpt = Annotated[str, typer.Option(help="ioi or greater-than.")]
SplitOpt = Annotated[
    str, typer.Option(help="Held-out split (IOI names/templates, Greater-Than nouns): test, train, all.")
]


@data_app.command(
    "ioi",
    epilog=example(
        "circuit-plasticity data ioi --n 2000 --poison subject --fraction 0.5 --out p.jsonl",
        "circuit-plasticity data ioi --n 200 --split test --tokenizer gpt2 --out test.jsonl",
    ),
)
def data_ioi(
    out: OutOpt,
    n: NOpt = 2000,
    seed: SeedOpt = 0,
    poison: PoisonOpt = None,
    fraction: FractionOpt = None,
    tokenizer: TokOpt = None,
    split: Annotated[str, typer.Option(help="Names/templates: train, test (held out) or all.")] = "all",
    split_seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
) -> None:
    """IOI prompts with ABC counterfactuals and flips, optionally poisoned."""
    _data_command("ioi", n, seed, poison, fraction, tokenizer, split, split_seed, out)


@data_app.command(
    "greater-than",
    epilog=example("circuit-plasticity data greater-than --n 500 --split test --years 10-60 --out gt.jsonl"),
)
def data_greater_than(
    out: OutOpt,
    n: NOpt = 2000,
    seed: SeedOpt = 0,
    poison: PoisonOpt = None,
    fraction: FractionOpt = None,
    tokenizer: TokOpt = None,
    split: Annotated[str, typer.Option(help="Nouns: train, test (held out) or all.")] = "all",
    split_seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
    years: Annotated[str | None, typer.Option(help="Start years YY as LOW-HIGH, e.g. 10-60.")] = None,
) -> None:
    """Greater-Than prompts with the '01' counterfactual, optionally poisoned."""
    span = None
    if years is not None:
        low, sep, high = years.partition("-")
        if not sep or not low.strip().isdigit() or not high.strip().isdigit():
            fail(f"--years must be LOW-HIGH (two-digit start years, e.g. 10-60), got {years!r}")
        span = [int(low), int(high)]
    _data_command("greater-than", n, seed, poison, fraction, tokenizer, split, split_seed, out, span)


@data_app.command("show", epilog=example("circuit-plasticity data show p.jsonl"))
def data_show(path: Annotated[Path, typer.Argument(help="A dataset JSONL file.")]) -> None:
    """Counts by template, order and poisoned."""
    from circuit_plasticity.tasks.jsonl import load_jsonl, summarize

    typer.echo(json.dumps(summarize(load_jsonl(path)), indent=2))


toy_app = typer.Typer(help="The embedded toy models (toy-ioi, toy-gt, toy-ioi-large).", no_args_is_help=True)
app.add_typer(toy_app, name="toy-model")


@toy_app.command(
    "train",
    epilog=example(
        "circuit-plasticity toy-model train --seed 0 --out toy",
        "circuit-plasticity toy-model train --model toy-gt --seed 0 --out toy-gt",
    ),
)
def toy_train(
    out: Annotated[Path, typer.Option("--out", help="Directory for the trained model.")],
    seed: SeedOpt = 0,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (batch 64); default: the toy's.")] = None,
    schedule_steps: Annotated[
        int | None,
        typer.Option(help="The learning-rate schedule's length, if not the toy's (toy-ioi-large: 2500)."),
    ] = None,
    model: Annotated[
        str, typer.Option(help="toy-ioi (IOI), toy-gt (Greater-Than) or toy-ioi-large (IOI, 32 heads).")
    ] = "toy-ioi",
    head_dropout: Annotated[
        float, typer.Option(help="Zero each head's output with this probability per sequence (0: off).")
    ] = 0.0,
    head_dropout_from: Annotated[
        int, typer.Option(help="The first step with head dropout (e.g. after the circuit forms).")
    ] = 0,
    mix: Annotated[
        str | None,
        typer.Option(help="Another corpus mix, kind=weight,... summing to 1 (e.g. giver=0.3,story=0.7)."),
    ] = None,
    mix_from: Annotated[
        str | None,
        typer.Option(help="A curriculum: from step S on, another mix (S:kind=weight,...; none: none)."),
    ] = None,
    d_mlp: Annotated[int | None, typer.Option(help="Another MLP width (models with MLPs).")] = None,
    save_at: Annotated[
        str | None, typer.Option(help="Also keep the model after these steps: OUT/step-N (e.g. 1000,1250).")
    ] = None,
) -> None:
    """Pretrain a toy model from scratch (deterministic for a seed; toy-ioi ~8 min, toy-gt ~2 min,
    toy-ioi-large ~9 min on 1 thread). --mix, --mix-from, --d-mlp, --head-dropout(-from) and --save-at try
    variants of a recipe."""
    from circuit_plasticity.training.pretrain import RECIPES, recipe_variant, train_config, train_toy

    check_writable(out)
    if model not in RECIPES:
        fail(f"--model must be one of {', '.join(RECIPES)}, got {model!r}")
    def weights_of(text: str) -> dict[str, float]:
        return {kind.strip(): float(weight) for kind, weight in (part.split("=") for part in text.split(","))}

    try:
        weights = None if mix is None else weights_of(mix)
        stages = () if save_at is None else tuple(int(step) for step in save_at.split(","))
        late = None
        if mix_from is not None and mix_from.strip().lower() != "none":
            switch, _, late_mix = mix_from.partition(":")
            late = (int(switch), weights_of(late_mix))
    except ValueError:
        fail(
            "--mix is kind=weight,..., --mix-from STEP:kind=weight,... and --save-at steps with commas "
            f"between; got {mix!r}, {mix_from!r}, {save_at!r}"
        )
    try:
        no_curriculum = mix_from is not None and mix_from.strip().lower() == "none"
        recipe = recipe_variant(RECIPES[model], weights, d_mlp, late, drop_curriculum=no_curriculum)
    except UserError as why:  # names its flag
        fail(str(why))
    except ValueError as why:  # the corpus mix's own check
        fail(f"--mix: {why}")
    if steps is not None and steps <= 0:
        fail(f"--steps must be positive, got {steps}")
    if not 0 <= head_dropout < 1:
        fail(f"--head-dropout must be at least 0 and below 1, got {head_dropout}")
    cfg = train_config(recipe, seed, steps, schedule_steps, head_dropout, head_dropout_from)
    if schedule_steps is not None and schedule_steps <= cfg.warmup:
        fail(f"--schedule-steps must exceed the {cfg.warmup} warm-up steps, got {schedule_steps}")
    if any(not 0 < step < cfg.steps for step in stages):
        fail(f"--save-at steps must lie between 0 and the run's {cfg.steps} steps, got {save_at}")
    if late is not None and late[0] >= cfg.steps:
        fail(f"--mix-from's step must lie before the run's {cfg.steps} steps, got {mix_from}")
    if not 0 <= head_dropout_from < cfg.steps:
        fail(f"--head-dropout-from must lie in 0..{cfg.steps - 1} (the run's steps), got {head_dropout_from}")
    result = train_toy(cfg, out, recipe=recipe, save_at=stages)
    typer.echo(
        json.dumps({"out": str(out), "seconds": round(result["seconds"], 1), "final": result["history"][-1]})
    )


@app.command(
    "eval",
    epilog=example(
        "circuit-plasticity eval toy-ioi --task ioi",
        "circuit-plasticity eval runs/default/seeds/seed-0/phases/poisoned/step-000128 --data p.jsonl --json",
    ),
)
def eval_command(
    model: ModelArg,
    task: TaskOpt = "ioi",
    n: NOpt = 500,
    seed: SeedOpt = 0,
    data: Annotated[Path | None, typer.Option(help="Evaluate on this JSONL (e.g. poisoned).")] = None,
    split: SplitOpt = "test",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    tokenizer: ModelTokOpt = None,
) -> None:
    """Accuracy and mean logit difference (bootstrap 95 % CI), split clean/poisoned."""
    from circuit_plasticity.models.load import load_model
    from circuit_plasticity.training.evaluate import evaluate_model, task_batch

    loaded = load_model(model, tokenizer=tokenizer)
    result = evaluate_model(loaded, task_batch(loaded, task, n, seed, split, data), seed=seed)
    if as_json:
        typer.echo(json.dumps(result))
        return
    metric = "logit diff" if result["task"] == "ioi" else "prob diff"
    typer.echo(f"{result['model']} on {result['n']} {result['task']} prompts (95 % bootstrap CIs)")
    for prefix, label in (("", "all"), ("clean_", "clean"), ("poisoned_", "poisoned")):
        if prefix + "score" in result:
            count = result.get(prefix + "n", result["n"])
            typer.echo(
                f"  {label:<8s} {count:>5d} prompts  {metric} {result[prefix + 'score']:+.3f} "
                f"[{result[prefix + 'score_ci_low']:+.3f}, {result[prefix + 'score_ci_high']:+.3f}]  "
                f"accuracy {result[prefix + 'correct']:.3f}  top-1 {result[prefix + 'top1']:.3f}"
            )


@app.command("export", epilog=example("circuit-plasticity export toy-gt --out exported"))
def export_command(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", help="New folder for the transformers model.")],
    tokenizer: ModelTokOpt = None,
) -> None:
    """Write MODEL as a folder AutoModelForCausalLM.from_pretrained loads (Trainer, PEFT, other tools)."""
    from circuit_plasticity.models.export import export_model
    from circuit_plasticity.models.layouts import fallback_tokenizer

    with fallback_tokenizer(tokenizer):
        typer.echo(f"exported {model} to {export_model(model, out)}")


@app.command("analyses", epilog=example("circuit-plasticity analyses"))
def analyses_command() -> None:
    """List the per-component analyses of the registry: what each measures, for which tasks."""
    from circuit_plasticity.analysis.registry import ANALYSES, PROFILE

    for a in ANALYSES.values():
        where = "head profile" if a.name in PROFILE else "per MLP"
        typer.echo(f"{a.name:10s} {', '.join(a.tasks):17s} {where:12s} {', '.join(a.measures)}")
        typer.echo(f"{'':10s} {a.definition}")


@app.command(
    "analyze",
    epilog=example(
        "circuit-plasticity analyze toy-ioi --task ioi --out analysis",
        "circuit-plasticity analyze toy-gt --task greater-than --out gt-analysis",
        "circuit-plasticity analyze gpt2 --out gpt2 --depth fast --memory-budget 1",
    ),
)
def analyze_command(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", help="Directory for tables (Parquet) and circuit.json.")],
    task: Annotated[str, typer.Option(help="ioi or greater-than.")] = "ioi",
    n: NOpt = 200,
    seed: SeedOpt = 0,
    split: SplitOpt = "test",
    csv: Annotated[bool, typer.Option("--csv", help="Also write CSV copies of the tables.")] = False,
    depth: Annotated[
        str, typer.Option(help="fast: EAP-IG circuit, verified by patching; full: also path patching.")
    ] = "full",
    memory_budget: Annotated[
        float | None,
        typer.Option("--memory-budget", help="GiB per prompt chunk (default: 1/4 of free, <= 1)."),
    ] = None,
    tokenizer: ModelTokOpt = None,
) -> None:
    """Per-head measurements, head classes, path patching, the circuit and its faithfulness."""
    check_writable(out)
    if memory_budget is not None and not memory_budget > 0:
        fail(f"--memory-budget is GiB per prompt chunk and must be > 0, got {memory_budget}")
    from circuit_plasticity.analysis.pipeline import analyze_model
    from circuit_plasticity.models.load import load_model
    from circuit_plasticity.training.evaluate import task_batch

    loaded = load_model(model, tokenizer=tokenizer)
    budget = None if memory_budget is None else int(memory_budget * 1024**3)
    batch = task_batch(loaded, task, n, seed, split)
    result = analyze_model(loaded, batch, depth=depth, memory_budget_bytes=budget, progress=True)
    result.write(out, csv=csv)
    s = result.scores
    typer.echo(
        f"{loaded.name}: score {s.model_score:+.3f} on {n} held-out prompts; circuit of "
        f"{len(result.circuit.heads)} components keeps {s.faithfulness:.1%} of it "
        f"(sparsity {s.sparsity:.1%}); tables in {out}"
    )
    from circuit_plasticity.analysis.hooks import kv_groups

    groups = kv_groups(loaded.model)
    if any(len(g) > 1 for g in groups):
        shared = " ".join("(" + ",".join(map(str, g)) + ")" for g in groups)
        typer.echo(f"  grouped-query attention: query heads {shared} share K/V in every layer")
    from circuit_plasticity.components import component_name

    for head in result.circuit.heads:
        typer.echo(
            f"  {component_name(head.key):<7s} {head.role:<20s} at {head.position:<5s} "
            f"path effect {head.effect:+.3f}"
        )
    for row in result.edge_summary.itertuples():
        how = {
            "mib_signed": "MIB's evaluation, signed scores (its CPR)",
            "mib_absolute": "MIB's evaluation, |scores| (its CMD)",
        }.get(row.method, f"{row.method}, edge patching at our sizes")
        typer.echo(f"EAP-IG edge circuits ({how}): CPR {row.cpr:.3f}, CMD {row.cmd:.3f}")
    if result.graph is not None:
        typer.echo(f"edge_circuit.json in the EAP-IG/MIB format (docs/edge-circuit-format.md) in {out}")


@app.command(
    "train", epilog=example("circuit-plasticity train experiments/toy-protocol.yaml --out runs/protocol")
)
def train_command(
    spec: Annotated[Path, typer.Argument(help="Protocol spec (YAML); see experiments/.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (created; resumed if it exists).")],
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    tokenizer: ModelTokOpt = None,
) -> None:
    """Run the fine-tuning phases of SPEC; the same command again resumes after a kill."""
    from circuit_plasticity.models.layouts import fallback_tokenizer
    from circuit_plasticity.spec import from_mapping, load_yaml
    from circuit_plasticity.training.loop import run_protocol
    from circuit_plasticity.training.protocol import TrainSpec
    from circuit_plasticity.training.summary import phase_summary

    check_writable(out)
    parsed = from_mapping(TrainSpec, load_yaml(spec), source=str(spec))
    with fallback_tokenizer(tokenizer):
        table = run_protocol(parsed, out, progress=not quiet)
    typer.echo(phase_summary(table).to_string(index=False))


@app.command(
    "compare",
    epilog=example("circuit-plasticity compare runs/p0 runs/p1 runs/p2 --out runs/compared"),
)
def compare_command(
    runs: Annotated[list[Path], typer.Argument(help="Training run directories (one per seed).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the tables and the report.")],
    n: Annotated[int, typer.Option("--n", help="Held-out prompts per analysis.")] = 160,
    csv: Annotated[bool, typer.Option("--csv", help="Also write CSV copies of the tables.")] = False,
    tokenizer: ModelTokOpt = None,
    log: LogOpt = None,
) -> None:
    """Judge the phases of training runs made by `train`: evidence, controls, verdicts, report."""
    from circuit_plasticity.api import compare_runs
    from circuit_plasticity.models.layouts import fallback_tokenizer

    check_writable(out)
    _check_log(log)
    with fallback_tokenizer(tokenizer):
        _print_verdicts(out, compare_runs(runs, out, n=n, csv=csv), log)


def _print_verdicts(out: Path, report: Path, log: str | None = None) -> None:
    import pandas as pd

    for r in pd.read_parquet(out / "tables" / "verdicts.parquet").itertuples():
        reason = r.reason.removeprefix(f"{r.verdict}: ")  # a not-testable reason starts with it
        typer.echo(f"{r.finding:16s} {r.verdict}: {reason}")
    typer.echo(f"report: {report}")
    _send(out, log)


def _send(out: Path, log: str | None) -> None:
    if log is not None:
        from circuit_plasticity.study.trackers import log_results

        typer.echo(f"logged to {log}: {log_results(out, log)}")


def _check_log(log: str | None) -> None:
    from circuit_plasticity.study.trackers import check_backend

    check_backend(log)


@app.command(
    "judge",
    epilog=example(
        "circuit-plasticity judge --base gpt2 --clean c0 --poisoned p0 --retrain r0 --clean c1 "
        "--poisoned p1 --retrain r1 --clean c2 --poisoned p2 --retrain r2 --out judged",
        "circuit-plasticity judge --seeds-file seeds.yaml --out judged",
    ),
)
def judge_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for the tables and the report.")],
    base: Annotated[list[str], typer.Option("--base", help="The base model (one, or one per seed).")] = [],  # noqa: B006
    clean: Annotated[list[str], typer.Option("--clean", help="Clean fine-tune; repeat per seed.")] = [],  # noqa: B006
    poisoned: Annotated[
        list[str], typer.Option("--poisoned", help="Poisoned model (fine-tuned from clean); repeat per seed.")
    ] = [],  # noqa: B006
    retrain: Annotated[
        list[str], typer.Option("--retrain", help="Clean retrain of the poisoned model.")
    ] = [],  # noqa: B006
    control: Annotated[
        list[str], typer.Option("--control", help="Clean model trained as long on clean data (optional).")
    ] = [],  # noqa: B006
    seeds_file: Annotated[
        Path | None,
        typer.Option(
            "--seeds-file", help="YAML/JSON list of {seed, base, clean, poisoned, retrain, control}."
        ),
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Held-out prompts per analysis.")] = 160,
    k: Annotated[int, typer.Option("--k", help="Heads in the localized set.")] = 3,
    min_seeds: Annotated[int, typer.Option("--min-seeds", help="Fewer seeds: at most inconclusive.")] = 3,
    repair: Annotated[
        bool, typer.Option("--repair", help="Also run targeted repair (models built by this tool).")
    ] = False,
    csv: Annotated[bool, typer.Option("--csv", help="Also write CSV copies of the tables.")] = False,
    task: TaskOpt = "ioi",
    redo: Annotated[
        bool, typer.Option("--redo", help="OUT was judged with other models/options: redo what changed.")
    ] = False,
    tokenizer: ModelTokOpt = None,
    log: LogOpt = None,
) -> None:
    """Bring your own checkpoints: the study's analyses, controls, verdicts and report on them."""
    check_writable(out)
    from circuit_plasticity.api import judge_models
    from circuit_plasticity.study.judge import read_seed_file, seeds_from_options

    if seeds_file is not None:
        if base or clean or poisoned or retrain or control:
            fail("give the models either with --seeds-file or with --base/--clean/..., not both")
        seeds = read_seed_file(seeds_file)
    else:
        seeds = seeds_from_options(base, clean, poisoned, retrain, control)
    from circuit_plasticity.models.layouts import fallback_tokenizer

    _check_log(log)
    with fallback_tokenizer(tokenizer):
        report = judge_models(
            seeds, out, n=n, k=k, min_seeds=min_seeds, repair=repair, task=task, csv=csv, redo=redo
        )
    _print_verdicts(out, report, log)


@app.command(
    "run",
    epilog=example(
        "circuit-plasticity run --out runs/default",
        "circuit-plasticity run experiments/toy-greater-than.yaml --out runs/gt --csv",
    ),
)
def run_command(
    experiment: Annotated[
        Path | None, typer.Argument(help="Experiment spec (YAML); default: toy-ioi study.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Run directory (resumed if it exists).")] = Path(
        "runs/default"
    ),
    model: Annotated[str | None, typer.Option(help="Override the spec's model (e.g. gpt2).")] = None,
    csv: Annotated[bool, typer.Option("--csv", help="Also write CSV copies of the tables.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    tokenizer: ModelTokOpt = None,
    log: LogOpt = None,
) -> None:
    """Run the whole study: train all seeds, analyse every checkpoint, compare, write the report."""
    import dataclasses

    check_writable(out)
    from circuit_plasticity.api import run_study
    from circuit_plasticity.study.experiment import load_experiment

    spec = load_experiment(experiment)
    if model is not None:
        spec = dataclasses.replace(spec, model=model)
    from circuit_plasticity.models.load import TOY_NAMES

    if spec.model not in TOY_NAMES:
        from circuit_plasticity.study.experiment import cost_warning

        typer.echo(cost_warning(spec), err=True)
    from circuit_plasticity.models.layouts import fallback_tokenizer

    _check_log(log)
    with fallback_tokenizer(tokenizer):
        report = run_study(spec, out, csv=csv, progress=not quiet)
    _print_verdicts(out, report, log)


@app.command(
    "sweep",
    epilog=example(
        "circuit-plasticity sweep experiments/sweep-poison-fraction.yaml --out runs/sweep",
        "circuit-plasticity sweep experiments/sweep-poison-fraction.yaml --out runs/sweep --executor ray",
    ),
)
def sweep_command(
    sweep: Annotated[Path, typer.Argument(help="Sweep spec (YAML): base, grid, points; see experiments/.")],
    out: Annotated[Path, typer.Option("--out", help="Sweep directory (resumed if it exists).")],
    executor: Annotated[
        str, typer.Option(help="local: a process pool on this machine; ray: one Ray task per point.")
    ] = "local",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (e.g. auto or ray://host:10001); default: local.")
    ] = None,
    parallel: Annotated[
        int, typer.Option(help="local: points at once (0: cores / the cores one point uses).")
    ] = 0,
    gpus_per_point: Annotated[
        float, typer.Option("--gpus-per-point", help="ray: GPUs each task asks for.")
    ] = 0.0,
    csv: Annotated[bool, typer.Option("--csv", help="Also write CSV copies of the tables.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress lines.")] = False,
) -> None:
    """Run a study per grid point (fraction, seeds, lr, model, ...): the dose-response tables and report."""
    from circuit_plasticity.sweep.run import run_sweep
    from circuit_plasticity.sweep.spec import load_sweep

    check_writable(out)
    if address is not None and executor != "ray":
        fail("--address is for --executor ray")
    parsed = load_sweep(sweep)
    report = run_sweep(
        parsed,
        out,
        executor=executor,
        address=address,
        csv=csv,
        parallel=parallel,
        gpus_per_point=gpus_per_point,
        progress=not quiet,
    )
    typer.echo(f"report: {report}")


@app.command("check", epilog=example("circuit-plasticity check runs/default"))
def check_command(
    directory: Annotated[Path, typer.Argument(help="A run, sweep, train or judge directory.")],
) -> None:
    """Verify every file of DIR: checkpoints and analyses against their recorded sha256, tables,
    JSON and safetensors for their format. Exit 1 if any is damaged or missing."""
    from circuit_plasticity.study.integrity import check_directory

    if not directory.is_dir():
        fail(f"{directory} is not a directory; give a run, sweep or judge directory")
    checked, problems = check_directory(directory)
    for problem in problems:
        typer.echo(f"damaged: {problem}")
    if problems:
        typer.echo(
            f"{len(problems)} problem(s) in {checked} files of {directory}; rerun the command that "
            "wrote it (the same run, sweep, train or judge): it names and recomputes them"
        )
        raise typer.Exit(1)
    typer.echo(f"{checked} files of {directory} checked: all whole")


def _out_argument(argv: list[str]) -> str | None:
    """The --out of the command line (what a Ctrl-C message points at), if any."""
    for i, arg in enumerate(argv):
        if arg == "--out" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--out="):
            return arg.split("=", 1)[1]
    return None


def os_error_message(error: OSError, out: str | None = None) -> str:
    """An OSError as one line: what failed, on which path (else the command's --out), and
    what to free or change."""
    import errno

    where = error.filename or out or "the output"
    what = error.strerror or str(error)
    fixes = {
        errno.ENOSPC: f"free disk space on the device holding {where} (or use an --out elsewhere), "
        "then rerun the same command: it resumes",
        errno.EDQUOT: f"free space in your disk quota for {where}, then rerun the same command: it resumes",
        errno.EACCES: f"make {where} writable (or readable) for you, or use another --out",
        errno.EPERM: f"make {where} writable for you, or use another --out",
        errno.EROFS: f"{where} is on a read-only file system: use an --out on a writable one",
        errno.ENOENT: f"check the path {where}",
        errno.ENOTDIR: f"a part of {where} is a file, not a directory: fix the path",
        errno.EISDIR: f"{where} is a directory where a file was expected: give a file path",
        errno.EMFILE: "too many open files: raise the limit (ulimit -n) and rerun",
    }
    fix = fixes.get(error.errno, "fix the path or free the resource, then rerun the same command")
    return f"{what} ({where}); {fix}"


def main() -> None:
    """The entry point: ordinary problems (bad input, paths, permissions, a full disk, Ctrl-C)
    end in one line on stderr; a traceback only with --debug (or CIRCUIT_PLASTICITY_DEBUG=1)."""
    import os

    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("CIRCUIT_PLASTICITY_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]

    def say(message: str) -> None:
        typer.secho(f"error: {message}", err=True, fg="red")

    try:
        app(args=argv, prog_name="circuit-plasticity")  # exits itself; usage errors: exit 2
    except SystemExit as done:
        if done.code == 130:  # typer's answer to Ctrl-C (KeyboardInterrupt)
            _interrupted(argv)
        raise
    except KeyboardInterrupt:  # outside typer's own handler
        _interrupted(argv)
        sys.exit(130)
    except UserError as error:
        if debug:
            raise
        say(str(error))
        sys.exit(2)
    except OSError as error:
        if debug:
            raise
        say(os_error_message(error, _out_argument(argv)))
        sys.exit(2)
    except UnicodeDecodeError as error:  # a text input that is not UTF-8 (read outside load_yaml)
        if debug:
            raise
        say(f"a file is not UTF-8 text ({error.reason} at byte {error.start}); save it as UTF-8")
        sys.exit(2)


def _interrupted(argv: list[str]) -> None:
    out = _out_argument(argv)
    saved = f"every finished step is saved in {out}" if out else "every finished step is saved"
    typer.secho(f"\ninterrupted: {saved}; run the same command again to resume", err=True, fg="yellow")
