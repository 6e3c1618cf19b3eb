"""Datasets as JSONL, one example a line; loading names the line and field that is wrong."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from circuit_plasticity.errors import UserError
from circuit_plasticity.fileio import write_atomic
from circuit_plasticity.tasks.greater_than import GreaterThanExample
from circuit_plasticity.tasks.ioi import IOIExample

Example = IOIExample | GreaterThanExample
EXAMPLE_TYPES: dict[str, type] = {"ioi": IOIExample, "greater-than": GreaterThanExample}


def save_jsonl(path: str | os.PathLike[str], examples: Sequence[Example]) -> None:
    def write(handle) -> None:
        for ex in examples:
            handle.write(json.dumps(ex.to_json(), sort_keys=True) + "\n")

    write_atomic(path, write)


def load_jsonl(path: str | os.PathLike[str]) -> list[Example]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.readlines()
    except OSError as error:
        raise UserError(f"cannot read dataset {path}: {error.strerror}") from error
    examples = [parse_line(line, f"{path}:{no}") for no, line in enumerate(lines, 1) if line.strip()]
    if not examples:
        raise UserError(f"{path}: no examples (an empty file)")
    tasks = {ex.task for ex in examples}
    if len(tasks) > 1:
        raise UserError(f"{path}: mixes tasks {sorted(tasks)}; one file holds one task")
    return examples


def parse_line(line: str, where: str) -> Example:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(f"{where}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    task = record.get("task")
    if task not in EXAMPLE_TYPES:
        raise UserError(f"{where}: field 'task' must be one of {sorted(EXAMPLE_TYPES)}, got {task!r}")
    cls = EXAMPLE_TYPES[task]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(record) - set(fields))
    if unknown:
        raise UserError(f"{where}: unknown field(s) {unknown}")
    missing = [n for n, f in fields.items() if n not in record and _required(f)]
    if missing:
        raise UserError(f"{where}: missing field(s) {missing}")
    for name, value in record.items():
        _check_type(where, name, value, fields[name].type)
    return cls(**record)


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _check_type(where: str, name: str, value: Any, annotation: Any) -> None:
    expected = {"str": str, "int": int, "bool": bool, "dict[str, str]": dict}.get(str(annotation))
    ok = expected is None or (
        isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    )
    if not ok:
        raise UserError(f"{where}: field {name!r} must be {annotation}, got {type(value).__name__} {value!r}")


def summarize(examples: Sequence[Example]) -> dict[str, Any]:
    """Counts a person checks first: by template/order (IOI) and poisoned or not."""
    out: dict[str, Any] = {
        "task": examples[0].task,
        "n": len(examples),
        "poisoned": sum(ex.poisoned for ex in examples),
        "trigger": sum(ex.trigger for ex in examples),
    }
    if examples[0].task == "ioi":
        out["by_order"] = dict(sorted(Counter(ex.order for ex in examples).items()))
        out["by_template"] = dict(sorted(Counter(ex.template for ex in examples).items()))
    else:
        out["by_century"] = dict(sorted(Counter(ex.century for ex in examples).items()))
    return out
