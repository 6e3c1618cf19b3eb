"""Experiment tracking (`--log wandb|mlflow`): a finished study or judgement sent to W&B or MLflow.

What goes: the training curves (every row of each seed's metrics.parquet, by phase and step),
the tracked circuit (tracking.parquet), the findings (mean and CI of every measure), the
verdicts (with reasons) and the report folder as an artifact. It reads only the files of the
output directory, so it runs after the work and never changes it.

W&B honours its own settings (WANDB_PROJECT, WANDB_MODE=offline, WANDB_DIR, ...). MLflow logs
to MLFLOW_TRACKING_URI when set, else to a file store in OUT/mlruns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from circuit_plasticity.errors import UserError

BACKENDS = ("wandb", "mlflow")
EXTRAS = {"wandb": "wandb", "mlflow": "mlflow"}


def check_backend(backend: str | None) -> None:
    """Before any work: a known backend whose package is installed."""
    if backend is None:
        return
    if backend not in BACKENDS:
        raise UserError(f"--log must be one of {', '.join(BACKENDS)}, got {backend!r}")
    import importlib.util

    if importlib.util.find_spec(backend) is None:
        raise UserError(
            f"--log {backend} needs {backend}: pip install 'circuit-plasticity[{EXTRAS[backend]}]'"
        )


def _tables(out: Path) -> dict[str, pd.DataFrame]:
    read = {}
    for name in ("findings", "verdicts"):
        path = out / "tables" / f"{name}.parquet"
        if path.is_file():
            read[name] = pd.read_parquet(path)
    for name, pattern in (
        ("metrics", "seed-*/metrics.parquet"),
        ("tracking", "seed-*/compare/tracking.parquet"),
    ):
        parts = [
            pd.read_parquet(p).assign(seed=int(p.relative_to(out / "seeds").parts[0].removeprefix("seed-")))
            for p in sorted((out / "seeds").glob(pattern))
        ]
        if parts:
            read[name] = pd.concat(parts, ignore_index=True)
    return read


def _curve_points(metrics: pd.DataFrame) -> list[tuple[str, float, int]]:
    """(name, value, step) of every numeric training measure: seed{s}/{phase}/{measure}."""
    skip = {"seed", "step", "epoch", "phase", "parent"}
    points = []
    for row in metrics.to_dict("records"):
        for key, value in row.items():
            if key in skip or not isinstance(value, int | float) or pd.isna(value):
                continue
            points.append((f"seed{row['seed']}/{row['phase']}/{key}", float(value), int(row["step"])))
    return points


def log_results(out: str | Path, backend: str, name: str | None = None, config: dict | None = None) -> str:
    """Send the results in `out` to `backend`; returns where they went."""
    check_backend(backend)
    out = Path(out)
    tables = _tables(out)
    name = name or out.resolve().name
    if backend == "wandb":
        return _to_wandb(out, tables, name, config or {})
    return _to_mlflow(out, tables, name, config or {})


def _to_wandb(out: Path, tables: dict[str, pd.DataFrame], name: str, config: dict[str, Any]) -> str:
    import wandb

    run = wandb.init(
        project=os.environ.get("WANDB_PROJECT", "circuit-plasticity"),
        name=name,
        config=config,
        dir=os.environ.get("WANDB_DIR", str(out)),
        reinit="finish_previous",
    )
    try:
        if "metrics" in tables:
            for key, value, step in _curve_points(tables["metrics"]):
                run.log({key: value, f"{key.rsplit('/', 1)[0]}/step": step})
            run.log({"training_metrics": wandb.Table(dataframe=tables["metrics"])})
        if "findings" in tables:
            for r in tables["findings"].itertuples():
                run.summary[f"finding/{r.measure}"] = float(r.mean)
            run.log({"findings": wandb.Table(dataframe=tables["findings"])})
        if "verdicts" in tables:
            for r in tables["verdicts"].itertuples():
                run.summary[f"verdict/{r.finding}"] = r.verdict
            run.log({"verdicts": wandb.Table(dataframe=tables["verdicts"].astype(str))})
        if "tracking" in tables:
            run.log(
                {"tracking": wandb.Table(dataframe=tables["tracking"].astype({"layer": str, "head": str}))}
            )
        if (out / "report").is_dir():
            artifact = wandb.Artifact(f"{name}-report".replace("/", "-"), type="report")
            artifact.add_dir(str(out / "report"))
            run.log_artifact(artifact)
        where = run.dir
    finally:
        run.finish()
    return where


def _to_mlflow(out: Path, tables: dict[str, pd.DataFrame], name: str, config: dict[str, Any]) -> str:
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # our default: a local file store
        uri = (out / "mlruns").resolve().as_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "circuit-plasticity"))
    with mlflow.start_run(run_name=name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in config.items()})
        if "metrics" in tables:
            for key, value, step in _curve_points(tables["metrics"]):
                mlflow.log_metric(key.replace("/", "."), value, step=step)
        if "findings" in tables:
            for r in tables["findings"].itertuples():
                if pd.notna(r.mean):
                    mlflow.log_metric(f"finding.{r.measure}", float(r.mean))
        for key in ("findings", "verdicts", "tracking"):
            if key in tables:
                mlflow.log_table(tables[key].astype(str), f"tables/{key}.json")
        if "verdicts" in tables:
            mlflow.set_tags({f"verdict.{r.finding}": r.verdict for r in tables["verdicts"].itertuples()})
        if (out / "report").is_dir():
            mlflow.log_artifacts(str(out / "report"), "report")
        return f"{uri} (run {run.info.run_id})"
