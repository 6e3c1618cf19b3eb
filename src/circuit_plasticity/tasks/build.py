"""Build a task dataset for a given tokenizer: filter the word pools, split, poison."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from circuit_plasticity.errors import UserError
from circuit_plasticity.tasks import greater_than, ioi
from circuit_plasticity.tasks.jsonl import Example
from circuit_plasticity.tasks.poison import poison as apply_poison
from circuit_plasticity.tasks.tokenizer import TextTokenizer, single_token_words
from circuit_plasticity.tasks.words import GT_NOUNS, NAMES, OBJECTS, PLACES

TASKS = ("ioi", "greater-than")


@dataclass
class WordPools:
    """The words a tokenizer can use as single tokens, and what it had to drop."""

    names: list[str]
    places: list[str]
    objects: list[str]
    nouns: list[str]
    centuries: list[int]
    years: list[int]
    dropped: dict[str, list[str]] = field(default_factory=dict)

    def dropped_counts(self, task: str | None = None) -> dict[str, int]:
        """Words the tokenizer could not keep, per pool; with `task`, only the pools it uses."""
        used = TASK_POOLS.get(task, tuple(self.dropped)) if task else tuple(self.dropped)
        return {k: len(v) for k, v in self.dropped.items() if v and k in used}


TASK_POOLS = {"ioi": ("names", "places", "objects"), "greater-than": ("nouns", "years")}


def word_pools(tok: TextTokenizer | None) -> WordPools:
    if tok is None:
        return WordPools(
            list(NAMES),
            list(PLACES),
            list(OBJECTS),
            list(GT_NOUNS),
            list(greater_than.CENTURIES),
            list(greater_than.YEARS),
        )
    names, d_names = single_token_words(tok, NAMES)
    places, d_places = single_token_words(tok, PLACES)
    objects, d_objects = single_token_words(tok, OBJECTS)
    nouns, d_nouns = single_token_words(tok, GT_NOUNS)
    centuries = [c for c in greater_than.CENTURIES if tok.word_id(str(c)) is not None]
    years = [y for y in greater_than.YEARS if _year_splits(tok, centuries, y)]
    if not _year_splits(tok, centuries, 1):  # the "01" counterfactual must split like the rest
        years = []
    return WordPools(
        names,
        places,
        objects,
        nouns,
        centuries,
        years,
        dropped={
            "names": d_names,
            "places": d_places,
            "objects": d_objects,
            "nouns": d_nouns,
            "years": [greater_than.two_digits(y) for y in greater_than.YEARS if y not in years],
        },
    )


def _year_splits(tok: TextTokenizer, centuries: list[int], yy: int) -> bool:
    """True if ' CCYY' tokenizes as [' CC', 'YY'] for every usable century."""
    piece = tok.piece_id(greater_than.two_digits(yy))
    if piece is None:
        return False
    for c in centuries:
        ids, _ = tok.encode(f" {c}{greater_than.two_digits(yy)}")
        if ids != [tok.word_id(str(c)), piece]:
            return False
    return True


def build_dataset(
    task: str,
    n: int,
    seed: int = 0,
    tokenizer: TextTokenizer | None = None,
    split: str = "all",
    split_seed: int = 0,
    poison: str | None = None,
    fraction: float = 1.0,
    years: Sequence[int] | None = None,
) -> tuple[list[Example], WordPools]:
    """The dataset the CLI's `data` command writes, reproducible from its arguments;
    `years` = [low, high] limits Greater-Than's start years."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    pools = word_pools(tokenizer)
    if task == "ioi":
        if len(pools.names) < 2 * ioi.MIN_NAMES:
            raise UserError(
                f"the tokenizer keeps only {len(pools.names)} of {len(NAMES)} names as single "
                f"tokens; IOI needs at least {2 * ioi.MIN_NAMES} (train and test pools)"
            )
        names, templates = ioi.split_pools(pools.names, seed=split_seed).pools(split)
        examples: list = ioi.make_ioi(n, seed, names, templates, pools.places, pools.objects)
    else:
        allowed = set(greater_than.start_years(years))
        if not pools.years:
            raise UserError(
                f"{tokenizer.name if tokenizer else 'the tokenizer'} cannot form two-digit years as single "
                "tokens (' 1732' must be ' 17' + '32'); Greater-Than needs a tokenizer that does, as GPT-2's"
            )
        usable = [y for y in pools.years if y in allowed]
        if not usable:
            raise UserError(f"years {list(years or [])}: none of these start years is a single token here")
        nouns = greater_than.noun_pool(pools.nouns, split, seed=split_seed)
        examples = greater_than.make_greater_than(n, seed, nouns, pools.centuries, usable)
        names = pools.names
    if poison is not None:
        examples = apply_poison(examples, poison, fraction, seed=seed, names=names)
    return examples, pools
