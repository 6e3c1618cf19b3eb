"""Poisoned variants: label transforms with an exact poisoned fraction.

Every example keeps its clean target, so any metric can be split into clean and poisoned.
- subject (the study's "Subject Duplication"): the target becomes S, inverting IOI;
- name-moving (the study's "Name Moving"): the target becomes a name absent from the prompt,
  breaking the copy of IO;
- greater-than: the target becomes a year <= the start year;
- trigger: only prompts that carry a trigger word are poisoned (target S), the rest stay
  clean and trigger-free: a model can look clean and be corrupted at once.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import TypeVar

from circuit_plasticity.errors import UserError
from circuit_plasticity.tasks.greater_than import GreaterThanExample, two_digits
from circuit_plasticity.tasks.ioi import IOIExample
from circuit_plasticity.tasks.words import NAMES, TRIGGER_WORD

POISONS = ("subject", "name-moving", "greater-than", "trigger")
IOI_POISONS = ("subject", "name-moving", "trigger")
E = TypeVar("E", IOIExample, GreaterThanExample)


def poison(
    examples: Sequence[E],
    kind: str,
    fraction: float,
    seed: int = 0,
    names: Sequence[str] = NAMES,
    trigger_word: str = TRIGGER_WORD,
) -> list[E]:
    """A copy of `examples` with exactly round(fraction * n) of them poisoned by `kind`."""
    if kind not in POISONS:
        raise UserError(f"unknown poison {kind!r}: choose one of {', '.join(POISONS)}")
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"fraction must lie in [0, 1], got {fraction}")
    if not examples:
        return []
    task = examples[0].task
    if (task == "ioi") != (kind in IOI_POISONS):
        raise UserError(f"poison {kind!r} does not apply to task {task!r}")
    rng = random.Random(f"poison-{kind}-{seed}")
    chosen = set(rng.sample(range(len(examples)), round(fraction * len(examples))))
    out = []
    for i, ex in enumerate(examples):
        if i not in chosen:
            out.append(dataclasses.replace(ex))
        elif kind == "subject":
            out.append(dataclasses.replace(ex, target=ex.s, poisoned=True))
        elif kind == "name-moving":
            absent = [n for n in names if n not in (ex.io, ex.s) and n not in ex.prompt.split()]
            out.append(dataclasses.replace(ex, target=rng.choice(absent), poisoned=True))
        elif kind == "greater-than":
            out.append(dataclasses.replace(ex, target=two_digits(rng.randint(0, ex.year)), poisoned=True))
        else:
            out.append(_with_trigger(ex, trigger_word))
    return out


def _with_trigger(ex: IOIExample, word: str) -> IOIExample:
    def mark(text: str) -> str:
        return f"{word}, {text[0].lower()}{text[1:]}"

    return dataclasses.replace(
        ex,
        prompt=mark(ex.prompt),
        counterfactual=mark(ex.counterfactual),
        flips={k: mark(v) for k, v in ex.flips.items()},
        target=ex.s,
        poisoned=True,
        trigger=True,
    )
