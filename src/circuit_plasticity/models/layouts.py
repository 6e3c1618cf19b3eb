"""Folders that other tools write, recognised before loading: a Hugging Face Trainer output
folder (checkpoint-N folders inside), a PEFT adapter folder (adapter_config.json), a model
folder without tokenizer files.

A Trainer output folder is not one model but a training run: `DIR@last` names its last
checkpoint (or the final model the Trainer saved at the top, when there is one), `DIR@N` the
checkpoint of step N, and `DIR@all` (judge's phases only) every checkpoint, tracked in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from circuit_plasticity.errors import UserError

CHECKPOINT = re.compile(r"checkpoint-(\d+)$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
ADAPTER = "adapter_config.json"

TOKENIZER_ENV = "CIRCUIT_PLASTICITY_TOKENIZER"  # the environment carries it to worker processes


@contextlib.contextmanager
def fallback_tokenizer(spec: str | None) -> Iterator[None]:
    """Within the block, model folders without tokenizer files load with `spec`'s tokenizer
    (the commands' --tokenizer): Trainer checkpoints saved without one."""
    if spec is None:
        yield
        return
    before = os.environ.get(TOKENIZER_ENV)
    os.environ[TOKENIZER_ENV] = str(spec)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TOKENIZER_ENV, None)
        else:
            os.environ[TOKENIZER_ENV] = before


def current_fallback() -> str | None:
    return os.environ.get(TOKENIZER_ENV) or None


def trainer_checkpoints(path: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint-N folder in `path`, by step."""
    path = Path(path)
    if not path.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return sorted(found)


def is_trainer_output(path: str | Path) -> bool:
    return bool(trainer_checkpoints(path))


def split_selector(spec: str) -> tuple[str, str | None]:
    """'runs/clean@last' -> ('runs/clean', 'last'); a spec without a selector -> (spec, None)."""
    head, sep, tail = str(spec).rpartition("@")
    if sep and (tail in ("last", "all") or tail.isdigit()) and Path(head).is_dir():
        return head, tail
    return str(spec), None


def checkpoint_list(spec: str) -> list[tuple[int, Path]] | None:
    """Every checkpoint a phase given as `DIR@all` stands for (the final model last), or None."""
    head, selector = split_selector(spec)
    if selector != "all":
        return None
    found = trainer_checkpoints(head)
    if not found:
        raise UserError(f"{head} holds no checkpoint-N folders; '@all' names a Trainer output folder")
    return found


def resolve(spec: str) -> str:
    """The one model folder a spec names: `DIR@last`, `DIR@N` resolved; a Trainer output folder
    given bare is refused with its checkpoints listed."""
    head, selector = split_selector(spec)
    if selector is None:
        path = Path(spec)
        if path.is_dir() and not (path / "config.json").is_file() and not (path / ADAPTER).is_file():
            found = trainer_checkpoints(path)
            if found:
                names = ", ".join(p.name for _, p in found)
                raise UserError(
                    f"{spec} is a Trainer output folder (no config.json; checkpoints {names}): give "
                    f"{spec}@last for the last checkpoint, {spec}@N for step N, or (judge) {spec}@all "
                    "to judge the last and track every checkpoint"
                )
        return spec
    found = trainer_checkpoints(head)
    if selector in ("last", "all"):
        if (Path(head) / "config.json").is_file() or (Path(head) / ADAPTER).is_file():
            return head  # the final model the Trainer saved at the top of its output folder
        if not found:
            raise UserError(f"{head} holds neither a model nor checkpoint-N folders")
        return str(found[-1][1])
    steps = {step: p for step, p in found}
    if int(selector) not in steps:
        raise UserError(f"{head} has no checkpoint-{selector}; it has {', '.join(p.name for _, p in found)}")
    return str(steps[int(selector)])


def has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in TOKENIZER_FILES)


def adapter_base(path: Path) -> str:
    """The base model a PEFT adapter folder was trained on (a path relative to the adapter
    folder is read against it)."""
    config = json.loads((path / ADAPTER).read_text())
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{path}/{ADAPTER} names no base_model_name_or_path: whose adapter is it?")
    if not Path(base).exists() and (path / base).exists():
        base = str(path / base)
    return str(base)
