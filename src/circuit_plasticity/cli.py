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
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build and inspect task datasets (JSONL).", no_args_is_help=True)
app.add_typer(data_app, name="data")


def fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg="red")
    raise typer.Exit(2)


def _data_command(task: str, n: int, seed: int, poison: str | None, fraction: float,
                  tokenizer: str | None, split: str, split_seed: int, out: Path) -> None:
    from circuit_plasticity.tasks.build import build_dataset
    from circuit_plasticity.tasks.jsonl import save_jsonl, summarize
    from circuit_plasticity.tasks.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer) if tokenizer else None
    examples, pools = build_dataset(task, n, seed, tok, split, split_seed, poison, fraction)
    save_jsonl(out, examples)
    summary = summarize(examples)
    summary["dropped_by_tokenizer"] = pools.dropped_counts()
    typer.echo(json.dumps({"out": str(out), **summary}))


NOpt = Annotated[int, typer.Option("--n", help="Number of prompts.")]
SeedOpt = Annotated[int, typer.Option(help="Seed: the same seed gives the same data.")]
PoisonOpt = Annotated[str | None, typer.Option(
    help="Poison: subject, name-moving, trigger (IOI) or greater-than.")]
FractionOpt = Annotated[float, typer.Option(help="Share of prompts poisoned, in [0, 1].")]
TokOpt = Annotated[str | None, typer.Option(
    help="Keep only words that are single tokens for this tokenizer: toy-ioi, a tokenizer.json, "
         "a model dir or a hub name.")]
OutOpt = Annotated[Path, typer.Option("--out", help="Output JSONL file.")]


@data_app.command("ioi")
def data_ioi(
    out: OutOpt, n: NOpt = 2000, seed: SeedOpt = 0, poison: PoisonOpt = None,
    fraction: FractionOpt = 1.0, tokenizer: TokOpt = None,
    split: Annotated[str, typer.Option(help="Names/templates: train, test (held out) or all.")] = "all",
    split_seed: Annotated[int, typer.Option(help="Seed of the train/test split.")] = 0,
) -> None:
    """IOI prompts with ABC counterfactuals and flips, optionally poisoned."""
    _data_command("ioi", n, seed, poison, fraction, tokenizer, split, split_seed, out)


@data_app.command("greater-than")
def data_greater_than(
    out: OutOpt, n: NOpt = 2000, seed: SeedOpt = 0, poison: PoisonOpt = None,
    fraction: FractionOpt = 1.0, tokenizer: TokOpt = None,
) -> None:
    """Greater-Than prompts with the '01' counterfactual, optionally poisoned."""
    _data_command("greater-than", n, seed, poison, fraction, tokenizer, "all", 0, out)


@data_app.command("show")
def data_show(path: Annotated[Path, typer.Argument(help="A dataset JSONL file.")]) -> None:
    """Counts by template, order and poisoned."""
    from circuit_plasticity.tasks.jsonl import load_jsonl, summarize

    typer.echo(json.dumps(summarize(load_jsonl(path)), indent=2))


def main() -> None:
    try:
        app()
    except UserError as error:
        typer.secho(f"error: {error}", err=True, fg="red")
        sys.exit(2)
