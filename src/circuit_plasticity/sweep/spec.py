"""A sweep spec: a base experiment, a grid (cartesian product) and explicit points, each point
an override of the base by dotted spec keys. Every point is validated as an ExperimentSpec
before any runs, so a typo or an out-of-range value in point 37 fails in a second, not a day in.

```yaml
base: experiments/default.yaml    # or a mapping of ExperimentSpec keys
grid:                             # key -> list of values; every combination is a point
  fraction: [0.05, 0.5, 1.0]
  analysis.n: [80, 160]
points:                           # optional extra points (added to the grid's)
  - {fraction: 0.0, lr: 1.0e-4}
```
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from circuit_plasticity.errors import UserError
from circuit_plasticity.spec import from_mapping, load_yaml
from circuit_plasticity.study.experiment import ExperimentSpec, check_study_phases

SWEEP_KEYS = ("base", "grid", "points")


@dataclass
class Point:
    """One study of the sweep: its overrides of the base, its directory name and its spec."""

    name: str
    overrides: dict[str, Any]
    spec: ExperimentSpec

    def spec_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self.spec)))


@dataclass
class Sweep:
    source: str
    base: dict  # the base mapping (before validation), as read
    grid: dict[str, list]
    points: list[Point]

    @property
    def variables(self) -> list[str]:
        """Every key some point overrides, in first-seen order: the sweep table's columns."""
        seen: dict[str, None] = {}
        for p in self.points:
            seen.update(dict.fromkeys(p.overrides))
        return list(seen)

    def to_json(self) -> dict:
        return {
            "grid": self.grid,
            "points": [
                {"name": p.name, "overrides": p.overrides, "spec": p.spec_json()} for p in self.points
            ],
        }


def _field_type(cls: type, key: str, source: str, at: str) -> Any:
    """The type of dotted `key` in dataclass `cls`, or a UserError naming the key."""
    hint: Any = cls
    walked = []
    for part in key.split("."):
        origin = typing.get_origin(hint)
        if origin in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        if not dataclasses.is_dataclass(hint):
            raise UserError(f"{source}: {at}: '{'.'.join(walked)}' has no sub-keys (in '{key}')")
        hints = typing.get_type_hints(hint)
        if part not in hints:
            where = ".".join(walked) or "the experiment"
            raise UserError(f"{source}: {at}: unknown key '{key}'; valid keys of {where}: {', '.join(hints)}")
        walked.append(part)
        hint = hints[part]
    return hint


def _set(mapping: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        inner = mapping.get(part)
        mapping[part] = inner = dict(inner) if isinstance(inner, dict) else {}
        mapping = inner
    mapping[parts[-1]] = value


def _label(value: Any) -> str:
    """A value as it appears in a point's directory name: readable, filesystem-safe."""
    if isinstance(value, list | tuple):
        text = "-".join(_label(v) for v in value)
    elif isinstance(value, dict):
        text = "-".join(f"{k}{_label(v)}" for k, v in value.items())
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text) or "_"


def point_name(overrides: dict[str, Any]) -> str:
    """`fraction=0.05,lr=0.0003`: stable for the same overrides, `base` for none."""
    return ",".join(f"{k}={_label(v)}" for k, v in overrides.items()) or "base"


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep spec: every point through ExperimentSpec's own validation."""
    path = Path(path)
    source = str(path)
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{source}: a sweep spec is a mapping with keys {', '.join(SWEEP_KEYS)}")
    line = lambda d, k: f" (line {d.lines[k]})" if k in getattr(d, "lines", {}) else ""  # noqa: E731
    for key in data:
        if key not in SWEEP_KEYS:
            raise UserError(
                f"{source}: unknown key '{key}'{line(data, key)}; valid keys: {', '.join(SWEEP_KEYS)}"
            )
    base = data.get("base") or {}
    base_source = source
    if isinstance(base, str):
        base_path = Path(base) if Path(base).is_absolute() else path.parent / base
        if not base_path.is_file() and Path(base).is_file():
            base_path = Path(base)  # relative to the working directory
        base_source = str(base_path)
        base = load_yaml(base_path) or {}
    if not isinstance(base, dict):
        raise UserError(f"{source}: 'base'{line(data, 'base')} must be a mapping or a spec path")
    from_mapping(ExperimentSpec, copy.deepcopy(base), source=base_source)  # the base alone is valid

    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise UserError(f"{source}: 'grid'{line(data, 'grid')} must map spec keys to lists of values")
    for key, values in grid.items():
        at = f"grid key '{key}'{line(grid, key)}"
        _field_type(ExperimentSpec, str(key), source, at)
        if not isinstance(values, list):
            raise UserError(f"{source}: {at} must be a list of values, got {values!r}")
        if not values:
            raise UserError(f"{source}: {at} is an empty list: a grid key needs at least one value")
    combos = (
        [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())] if grid else []
    )

    extra = data.get("points") or []
    if not isinstance(extra, list):
        raise UserError(f"{source}: 'points'{line(data, 'points')} must be a list of mappings")
    for i, overrides in enumerate(extra):
        if not isinstance(overrides, dict):
            raise UserError(f"{source}: points[{i}] must be a mapping of spec keys to values")
        for key in overrides:
            _field_type(ExperimentSpec, str(key), source, f"points[{i}] key '{key}'{line(overrides, key)}")
    wanted = combos + [dict(o) for o in extra]
    if not wanted and ("grid" in data or "points" in data):  # given, but empty: a mistake
        raise UserError(
            f"{source}: the grid and points give no points; give grid: {{key: [values, ...]}} or "
            "points: [...] (or leave both out to sweep the base alone)"
        )
    if not wanted:
        wanted = [{}]  # no grid, no points: the base alone

    points: list[Point] = []
    names: dict[str, int] = {}
    for i, overrides in enumerate(wanted):
        mapping = copy.deepcopy(dict(base))
        for key, value in overrides.items():
            _set(mapping, key, value)
        label = point_name(overrides)
        where = ", ".join(f"{k}={v!r}" for k, v in overrides.items()) or "the base"
        spec = from_mapping(ExperimentSpec, mapping, source=f"{source}: point {where}")
        try:
            check_study_phases(spec)
        except UserError as error:
            raise UserError(f"{source}: point {where}: {error}") from None
        if label in names:
            raise UserError(f"{source}: points {names[label]} and {i} are the same point ({label})")
        names[label] = i
        points.append(Point(label, {k: overrides[k] for k in overrides}, spec))
    return Sweep(source, dict(base), {str(k): list(v) for k, v in grid.items()}, points)


def spec_value(spec: ExperimentSpec, key: str) -> Any:
    """The value of dotted `key` in a validated spec, as JSON values (what the tables hold)."""
    value: Any = json.loads(json.dumps(dataclasses.asdict(spec)))
    for part in key.split("."):
        value = value[part]
    return value
