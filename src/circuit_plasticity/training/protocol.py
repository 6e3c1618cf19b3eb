"""The fine-tuning protocol as data: phases, each starting from another phase's final weights.

The study's default protocol (base -> clean -> subject-poisoned -> clean retrain, plus a
clean-only control branch as long as poison + retrain) is built by `study.experiment.ExperimentSpec`
and spelled out in experiments/toy-protocol.yaml; docs/training.md has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from circuit_plasticity.components import Component
from circuit_plasticity.spec import bad
from circuit_plasticity.tasks.build import TASKS
from circuit_plasticity.tasks.poison import POISONS

SCHEDULES = ("constant", "linear", "cosine")
LOSSES = ("answer", "all")


@dataclass
class DataSpec:
    n: int = 1000
    poison: str | None = None
    fraction: float = 1.0
    seed: int = 0

    def validate(self, where: str, source: str) -> None:
        if self.n <= 0:
            raise bad(source, f"{where}.n", f"must be positive, got {self.n}")
        if self.poison is not None and self.poison not in POISONS:
            raise bad(source, f"{where}.poison", f"unknown poison {self.poison!r}; one of {POISONS}")
        if not 0 <= self.fraction <= 1:
            raise bad(source, f"{where}.fraction", f"must lie in [0, 1], got {self.fraction}")


@dataclass
class LoraSpec:
    """Low-rank adapters instead of a full fine-tune: each head's and MLP's weight matrix W
    trains as W0 + (alpha / rank) B A with W0 frozen (B starts at zero, so step 0 is the parent).
    Everything else (embeddings, norms, biases) stays frozen, as in LoRA."""

    rank: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["attn", "mlp"])  # heads' and MLPs' weights

    def validate(self, where: str, source: str) -> None:
        if self.rank <= 0 or self.alpha <= 0:
            raise bad(source, where, f"rank and alpha must be positive, got {self.rank} and {self.alpha}")
        if not self.targets or not set(self.targets) <= {"attn", "mlp"}:
            raise bad(source, f"{where}.targets", f"a non-empty list of 'attn' and 'mlp', got {self.targets}")


@dataclass
class Phase:
    name: str
    data: DataSpec = field(default_factory=DataSpec)
    start_from: str | None = None  # a phase name, "base", or None: the previous phase
    epochs: int = 2
    lr: float = 3e-4
    schedule: str = "constant"
    warmup_steps: int = 0
    batch_size: int = 32
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    loss: str = "answer"
    seed: int = 0
    train_only: list[str] | None = None  # components (a1.h0, m1) to train; the rest stays frozen
    lora: LoraSpec | None = None  # train low-rank adapters (merged into each checkpoint)

    def __post_init__(self) -> None:
        """train_only in the one spelling (the older 'L.H' too), so a spec and its saved copy
        compare equal however either wrote the names; what does not parse `validate` reports."""
        if self.train_only:
            self.train_only = [_canonical(c) for c in self.train_only]

    def validate(self, where: str, source: str) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise bad(source, f"{where}.name", f"use letters, digits, - and _; got {self.name!r}")
        for key in ("epochs", "batch_size"):
            if getattr(self, key) <= 0:
                raise bad(source, f"{where}.{key}", f"must be positive, got {getattr(self, key)}")
        if not 0 < self.lr < 1:
            raise bad(source, f"{where}.lr", f"must lie in (0, 1), got {self.lr}")
        if self.schedule not in SCHEDULES:
            raise bad(source, f"{where}.schedule", f"one of {SCHEDULES}, got {self.schedule!r}")
        if self.loss not in LOSSES:
            raise bad(source, f"{where}.loss", f"one of {LOSSES}, got {self.loss!r}")
        if self.train_only is not None and (not self.train_only or self.weight_decay != 0):
            raise bad(
                source,
                f"{where}.train_only",
                "needs at least one head and weight_decay 0 (decay would move the frozen weights)",
            )
        for name in self.train_only or []:
            try:
                Component.parse(name)
            except ValueError as why:
                raise bad(source, f"{where}.train_only", str(why)) from None
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise bad(source, where, "warmup_steps and weight_decay must be >= 0")
        if self.lora is not None:
            self.lora.validate(f"{where}.lora", source)


def _canonical(text: str) -> str:
    try:
        return Component.parse(text).name
    except ValueError:
        return text


@dataclass
class EvalSpec:
    every_steps: int = 10
    n: int = 300
    lm_docs: int = 100  # held-out general text (about 5,000 tokens): collateral damage

    def validate(self, where: str, source: str) -> None:
        if self.every_steps <= 0 or self.n <= 0 or self.lm_docs < 0:
            raise bad(source, where, "every_steps and n must be positive, lm_docs >= 0")


def check_years(years: list[int] | None, task: str, source: str) -> None:
    """A year range only for Greater-Than, and one that leaves a valid prompt."""
    from circuit_plasticity.errors import UserError
    from circuit_plasticity.tasks.greater_than import start_years

    if years is None:
        return
    if task != "greater-than":
        raise bad(source, "years", f"a start-year range applies to greater-than only, not {task}")
    try:
        start_years(years)
    except UserError as error:
        raise bad(source, "years", str(error)) from error


@dataclass
class TrainSpec:
    model: str = "toy-ioi"
    task: str = "ioi"
    seed: int = 0
    checkpoint_every_steps: int = 0  # 0: one checkpoint per epoch only
    eval: EvalSpec = field(default_factory=EvalSpec)
    phases: list[Phase] = field(default_factory=list)
    years: list[int] | None = None  # Greater-Than: [low, high] start years (None: 02-98)

    def validate(self, where: str, source: str) -> None:
        if self.task not in TASKS:
            raise bad(source, "task", f"one of {TASKS}, got {self.task!r}")
        check_years(self.years, self.task, source)
        if not self.phases:
            raise bad(source, "phases", "at least one phase is needed")
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names) or "base" in names:
            raise bad(source, "phases", f"names must be unique and not 'base': {names}")
        for i, p in enumerate(self.phases):
            if p.start_from is not None and p.start_from != "base" and p.start_from not in names[:i]:
                raise bad(
                    source,
                    f"phases[{i}].start_from",
                    f"{p.start_from!r} is not 'base' or an earlier phase ({names[:i]})",
                )
            if p.data.poison is not None and (p.data.poison == "greater-than") != (self.task != "ioi"):
                raise bad(source, f"phases[{i}].data.poison", f"{p.data.poison!r} does not fit {self.task}")
        if self.checkpoint_every_steps < 0:
            raise bad(source, "checkpoint_every_steps", "must be >= 0")

    def parent(self, index: int) -> str:
        """The phase (or 'base') whose final weights phase `index` starts from."""
        p = self.phases[index]
        if p.start_from is not None:
            return p.start_from
        return "base" if index == 0 else self.phases[index - 1].name
