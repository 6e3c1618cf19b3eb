"""The sweep's tables, read from each point's own tables (tables/findings.parquet and
tables/verdicts.parquet): one row per point x measure, one per point x finding, with the
point's overrides as columns so a dose-response is a groupby away."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from circuit_plasticity.fileio import write_table
from circuit_plasticity.sweep.spec import Sweep

FINDING_COLUMNS = ["measure", "mean", "ci_low", "ci_high", "n_seeds", "interval", "clipped"]
VERDICT_COLUMNS = ["finding", "verdict", "reason"]


@dataclass
class SweepTables:
    findings: pd.DataFrame  # point, <overrides>, measure, mean, ci_low, ci_high, n_seeds, ...
    verdicts: pd.DataFrame  # point, <overrides>, finding, verdict, reason


def _cell(value: Any) -> Any:
    """Scalars stay as they are; lists and mappings (seeds, phases) become their JSON text."""
    return json.dumps(value, sort_keys=True) if isinstance(value, list | tuple | dict) else value


def _columns(sweep: Sweep) -> pd.DataFrame:
    """One row per point: its name and its value of every swept key (the base's where the
    point does not override it, so every row is complete)."""
    from circuit_plasticity.sweep.spec import spec_value

    rows = [
        {"point": p.name, **{k: _cell(spec_value(p.spec, k)) for k in sweep.variables}} for p in sweep.points
    ]
    frame = pd.DataFrame(rows)
    for key in sweep.variables:  # a column of numbers and strings is text, so Parquet takes it
        kinds = {type(v) for v in frame[key]}
        if len(kinds) > 1 and not kinds <= {int, float}:
            frame[key] = frame[key].astype(str)
    return frame


def collect_sweep(sweep: Sweep, out: Path, csv: bool = False) -> SweepTables:
    """tables/sweep.parquet and tables/sweep_verdicts.parquet, points in the sweep's order."""
    from circuit_plasticity.sweep.run import point_dir

    columns = _columns(sweep)
    findings, verdicts = [], []
    for p in sweep.points:
        tables = point_dir(out, p.name) / "tables"
        findings.append(pd.read_parquet(tables / "findings.parquet")[FINDING_COLUMNS].assign(point=p.name))
        verdicts.append(pd.read_parquet(tables / "verdicts.parquet")[VERDICT_COLUMNS].assign(point=p.name))
    keys = list(columns.columns)
    f = columns.merge(pd.concat(findings, ignore_index=True), on="point", how="right")[keys + FINDING_COLUMNS]
    v = columns.merge(pd.concat(verdicts, ignore_index=True), on="point", how="right")[keys + VERDICT_COLUMNS]
    write_table(out / "tables" / "sweep.parquet", f, csv=csv)
    write_table(out / "tables" / "sweep_verdicts.parquet", v, csv=csv)
    return SweepTables(f, v)
