"""The Greater-Than distribution (Hanna et al. 2023).

"The war lasted from the year 1732 to the year 17" -> a two-digit year greater than 32.
The counterfactual starts in year "01", which carries no information about the answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from circuit_plasticity.errors import UserError
from circuit_plasticity.tasks.words import GT_NOUNS

TEMPLATE = "The {noun} lasted from the year {century}{yy} to the year {century}"
CENTURIES = tuple(range(11, 18))
YEARS = tuple(range(2, 99))


@dataclass
class GreaterThanExample:
    prompt: str
    target: str  # a two-digit year; clean: > year, poisoned: <= year
    clean_target: str
    noun: str
    century: int
    year: int
    counterfactual: str
    poisoned: bool = False
    trigger: bool = False
    task: str = "greater-than"

    def to_json(self) -> dict:
        return asdict(self)


def two_digits(year: int) -> str:
    return f"{year:02d}"


def render(noun: str, century: int, yy: int) -> str:
    return TEMPLATE.format(noun=noun, century=century, yy=two_digits(yy))


def start_years(years: Sequence[int] | None) -> list[int]:
    """The start years YY a range [low, high] allows (None: all of YEARS, 02-98). A start year
    needs a greater two-digit year after it (YY <= 98) and must differ from the
    counterfactual's 01 (YY >= 2); a range that leaves none is refused."""
    if years is None:
        return list(YEARS)
    if len(years) != 2 or not all(isinstance(y, int) and not isinstance(y, bool) for y in years):
        raise UserError(f"years must be two integers [low, high], got {list(years)!r}")
    low, high = years
    if not 0 <= low <= high <= 99:
        raise UserError(f"years [{low}, {high}]: need 0 <= low <= high <= 99 (two-digit start years)")
    kept = [y for y in YEARS if low <= y <= high]
    if not kept:
        raise UserError(
            f"years [{low}, {high}] leave no valid Greater-Than prompt: a start year YY needs a greater "
            f"two-digit year after it (YY <= {YEARS[-1]}) and must differ from the counterfactual's 01 "
            f"(YY >= {YEARS[0]})"
        )
    return kept


def noun_pool(nouns: Sequence[str], split: str, seed: int = 0, test_fraction: float = 0.2) -> list[str]:
    """The nouns of a split: `test` nouns are held out of `train` (as IOI holds out names), so
    evaluation prompts are ones fine-tuning never saw; `all` keeps every noun."""
    if split == "all":
        return list(nouns)
    if split not in ("train", "test"):
        raise UserError(f"split must be train, test or all; got {split!r}")
    shuffled = list(dict.fromkeys(nouns))
    random.Random(f"gt-split-{seed}").shuffle(shuffled)
    if len(shuffled) < 2:
        raise UserError(f"{len(shuffled)} single-token nouns are too few to split into train and test")
    n_test = max(1, round(len(shuffled) * test_fraction))
    return shuffled[:n_test] if split == "test" else shuffled[n_test:]


def make_greater_than(
    n: int,
    seed: int = 0,
    nouns: Sequence[str] = GT_NOUNS,
    centuries: Sequence[int] = CENTURIES,
    years: Sequence[int] = YEARS,
) -> list[GreaterThanExample]:
    """`n` prompts; each training target is a year drawn uniformly above the start year."""
    if n <= 0:
        raise UserError(f"n must be a positive number of prompts, got {n}")
    if not nouns or not centuries or not years:
        raise UserError(
            "no usable nouns, centuries or years: the tokenizer must keep two-digit years as "
            "single tokens (as GPT-2's does)"
        )
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        noun, century, yy = rng.choice(nouns), rng.choice(centuries), rng.choice(years)
        target = two_digits(rng.randint(yy + 1, 99))
        out.append(
            GreaterThanExample(
                prompt=render(noun, century, yy),
                target=target,
                clean_target=target,
                noun=noun,
                century=century,
                year=yy,
                counterfactual=render(noun, century, 1),
            )
        )
    return out
