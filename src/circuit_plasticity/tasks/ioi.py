"""The IOI distribution (Wang et al. 2022): templates, orders, counterfactuals, splits.

A template holds three name slots: {N1} and {N2} (the pair introduced first) and {S} (the
subject's second mention, S2). ABBA fills N1=IO, N2=S; BABA fills N1=S, N2=IO. The prompt ends
just before the answer, so the next token is the target.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from circuit_plasticity.errors import UserError
from circuit_plasticity.tasks.words import NAMES, OBJECTS, PLACES

TEMPLATES: tuple[str, ...] = (
    "Then, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "Then, {N1} and {N2} were thinking about going to the {PLACE}. {S} wanted to give a {OBJECT} to",
    "Then, {N1} and {N2} had a long argument, and afterwards {S} said to",
    "After {N1} and {N2} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {N1} and {N2} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "When {N1} and {N2} got a {OBJECT} at the {PLACE}, {S} decided to give the {OBJECT} to",
    "While {N1} and {N2} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "While {N1} and {N2} were commuting to the {PLACE}, {S} gave a {OBJECT} to",
    "After the lunch, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Afterwards, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} had a long argument. Afterwards {S} said to",
    "The {PLACE} {N1} and {N2} went to had a {OBJECT}. {S} gave it to",
    "Friends {N1} and {N2} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
ORDERS = ("ABBA", "BABA")
FLIPS = ("abc", "io_flip", "s_flip", "s1_flip")
MIN_NAMES = 5  # IO, S and three fresh names for the ABC counterfactual


@dataclass
class IOIExample:
    """One prompt with everything an analysis or a poison needs to know about it."""

    prompt: str
    target: str
    clean_target: str
    io: str
    s: str
    template: int
    order: str
    place: str
    object: str
    counterfactual: str
    flips: dict[str, str] = field(default_factory=dict)
    poisoned: bool = False
    trigger: bool = False
    task: str = "ioi"

    def to_json(self) -> dict:
        return asdict(self)


def render(template: int, n1: str, n2: str, s2: str, place: str, obj: str) -> str:
    return TEMPLATES[template].format(N1=n1, N2=n2, S=s2, PLACE=place, OBJECT=obj)


def make_ioi(
    n: int,
    seed: int = 0,
    names: Sequence[str] = NAMES,
    templates: Sequence[int] | None = None,
    places: Sequence[str] = PLACES,
    objects: Sequence[str] = OBJECTS,
) -> list[IOIExample]:
    """`n` clean IOI prompts, ABBA/BABA balanced exactly and templates used evenly."""
    templates = list(range(len(TEMPLATES))) if templates is None else list(templates)
    _check_pools(n, names, templates, places, objects)
    rng = random.Random(seed)
    slots = [(templates[(i // 2) % len(templates)], ORDERS[i % 2]) for i in range(n)]
    rng.shuffle(slots)
    return [_example(rng, t, order, names, places, objects) for t, order in slots]


def _check_pools(n, names, templates, places, objects) -> None:
    if n <= 0:
        raise UserError(f"n must be a positive number of prompts, got {n}")
    if len(set(names)) < MIN_NAMES:
        raise UserError(
            f"only {len(set(names))} usable names (need at least {MIN_NAMES}: IO, S and three "
            "for the ABC counterfactual); use a tokenizer whose vocabulary has more one-token names"
        )
    if not templates:
        raise UserError("no templates to draw from: pass at least one template id")
    bad = [t for t in templates if not 0 <= t < len(TEMPLATES)]
    if bad:
        raise UserError(f"unknown template ids {bad}: valid ids are 0..{len(TEMPLATES) - 1}")
    if not places or not objects:
        raise UserError("no usable places or objects left after tokenizer filtering")


def _example(rng, template, order, names, places, objects) -> IOIExample:
    io, s, x, y, z = rng.sample(list(dict.fromkeys(names)), 5)
    place, obj = rng.choice(places), rng.choice(objects)
    n1, n2 = (io, s) if order == "ABBA" else (s, io)

    def swap(name: str, old: str, new: str) -> str:
        return new if name == old else name

    flips = {
        "abc": render(template, x, y, z, place, obj),
        "io_flip": render(template, swap(n1, io, x), swap(n2, io, x), s, place, obj),
        "s_flip": render(template, swap(n1, s, x), swap(n2, s, x), x, place, obj),
        "s1_flip": render(template, swap(n1, s, x), swap(n2, s, x), s, place, obj),
    }
    return IOIExample(
        prompt=render(template, n1, n2, s, place, obj),
        target=io,
        clean_target=io,
        io=io,
        s=s,
        template=template,
        order=order,
        place=place,
        object=obj,
        counterfactual=flips["abc"],
        flips=flips,
    )


@dataclass(frozen=True)
class Split:
    """Which names and templates belong to training and which are held out."""

    train_names: tuple[str, ...]
    test_names: tuple[str, ...]
    train_templates: tuple[int, ...]
    test_templates: tuple[int, ...]

    def pools(self, part: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
        if part == "train":
            return self.train_names, self.train_templates
        if part == "test":
            return self.test_names, self.test_templates
        if part == "all":
            return (
                self.train_names + self.test_names,
                tuple(sorted(self.train_templates + self.test_templates)),
            )
        raise UserError(f"unknown split {part!r}: use train, test or all")


def split_pools(
    names: Sequence[str] = NAMES,
    n_templates: int = len(TEMPLATES),
    seed: int = 0,
    test_name_fraction: float = 0.25,
    n_test_templates: int = 3,
) -> Split:
    """Disjoint train/test names and templates, so held-out evaluation is really held out."""
    rng = random.Random(f"split-{seed}")
    shuffled = list(dict.fromkeys(names))
    rng.shuffle(shuffled)
    n_test = max(MIN_NAMES, round(len(shuffled) * test_name_fraction))
    if len(shuffled) - n_test < MIN_NAMES:
        raise UserError(f"{len(shuffled)} names are too few to split into train and test pools")
    tids = list(range(n_templates))
    rng.shuffle(tids)
    if not 0 < n_test_templates < n_templates:
        raise UserError(f"n_test_templates must be in 1..{n_templates - 1}")
    return Split(
        train_names=tuple(shuffled[n_test:]),
        test_names=tuple(shuffled[:n_test]),
        train_templates=tuple(sorted(tids[n_test_templates:])),
        test_templates=tuple(sorted(tids[:n_test_templates])),
    )
