"""Validated YAML specs: unknown keys and bad values are rejected with the key's path and line.

Specs are dataclasses; `from_mapping` walks a YAML mapping into them, so a typo like
`learnin_rate` is an error that names `phases[1].learnin_rate` and its line, never a silent
default.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from circuit_plasticity.errors import UserError

T = TypeVar("T")


def _load_with_lines(text: str) -> Any:
    """Parse YAML safely, remembering the line of every mapping key (LineDict.lines)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader, node, deep=False):
        mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=deep)
        lines = {k.value: k.start_mark.line + 1 for k, _ in node.value if hasattr(k, "value")}
        return LineDict(mapping, lines)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return yaml.load(text, Loader=Loader)  # noqa: S506 - SafeLoader subclass


class LineDict(dict):
    def __init__(self, mapping: dict, lines: dict[str, int]):
        super().__init__(mapping)
        self.lines = lines


def load_yaml(path: str | Path) -> Any:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read spec {path}: {error.strerror}") from error
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); save the spec as UTF-8"
        ) from None
    try:
        return _load_with_lines(text)
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML: {error}") from None


def from_mapping(cls: type[T], data: Any, where: str = "", source: str = "spec") -> T:
    """Build dataclass `cls` from a mapping, type-checking each field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: {where or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    lines = getattr(data, "lines", {})
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        at = f" (line {lines[key]})" if key in lines else ""
        if key not in fields:
            raise UserError(f"{source}: unknown key '{path}'{at}; valid keys: {', '.join(fields)}")
        kwargs[key] = _convert(hints[key], value, path, source, at)
    try:
        obj = cls(**kwargs)
    except TypeError as error:
        raise UserError(f"{source}: {where or 'top level'}: {error}") from None
    check = getattr(obj, "validate", None)
    if check is not None:
        check(where or "top level", source)
    return obj


def _convert(hint: Any, value: Any, path: str, source: str, at: str = "") -> Any:
    """`value` as type `hint`; `path` names it in errors (e.g. phases[1].lr), `at` its line."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, path, source, at)
    if dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, path, source)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{source}: '{path}'{at} must be a list")
        return [_convert(args[0], v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise UserError(f"{source}: '{path}'{at} must be a list of {len(args)} values")
        return tuple(
            _convert(a, v, f"{path}[{i}]", source, at)
            for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if hint is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint is typing.Any:
        return value
    raise UserError(f"{source}: '{path}'{at} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def same_spec(cls: type, saved: dict, current: Any) -> bool:
    """True if a saved spec (JSON) means the same as `current`: the saved one is read back
    through the dataclass, so fields added later with defaults do not count as a difference."""
    try:
        reread = from_mapping(cls, saved, source="saved spec")
    except UserError:
        return False
    return json.loads(json.dumps(dataclasses.asdict(reread))) == json.loads(
        json.dumps(dataclasses.asdict(current))
    )


def bad(source: str, where: str, message: str) -> UserError:
    return UserError(f"{source}: {where}: {message}")
