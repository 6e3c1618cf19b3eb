"""Phases given as lists of checkpoints are tracked (curves, hysteresis); the results go to
W&B (offline mode) and MLflow (a local file store) and can be read back from there."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from circuit_plasticity.models.load import load_model
from circuit_plasticity.study.judge import JudgeOptions, SeedModels, judge

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """A judgement whose phases are lists of two checkpoints each (weights nudged apart)."""
    root = tmp_path_factory.mktemp("lists")
    phases = {}
    for i, phase in enumerate(("clean", "poisoned", "retrain")):
        paths = []
        for step in (1, 2):
            loaded = load_model("toy-ioi", "cpu")
            with torch.no_grad():
                loaded.model.blocks[2].attn.o.weight.mul_(1 + 0.2 * (i + 1) * step * (-1) ** i)
            loaded.save(root / f"{phase}-{step}" / f"checkpoint-{10 * step}")
            paths.append(str(root / f"{phase}-{step}" / f"checkpoint-{10 * step}"))
        phases[phase] = paths
    options = JudgeOptions(n=40, n_random=20, full_analysis=False)
    options.thresholds.min_seeds = 1
    out = root / "judged"
    judge([SeedModels(seed=0, base="toy-ioi", **phases)], out, options, progress=lambda *_: None)
    return out, phases


def test_lists_of_checkpoints_are_tracked_with_curves_and_hysteresis(judged):
    out, phases = judged
    tracking = pd.read_parquet(out / "seeds" / "seed-0" / "compare" / "tracking.parquet")
    for phase in phases:
        assert sorted(tracking[tracking.phase == phase].step.unique()) == [10, 20]
    metrics = pd.read_parquet(out / "seeds" / "seed-0" / "metrics.parquet")
    score = tracking[(tracking.component == "circuit") & (tracking.measure == "score")]
    assert sorted(metrics.clean_score) == sorted(score.value)
    assert set(metrics[metrics.phase == "retrain"].parent) == {"poisoned"}
    record = json.loads((out / "judge.json").read_text())["models"]["0"]
    assert record["clean"]["model"] == phases["clean"][-1]  # the last checkpoint is judged
    findings = pd.read_parquet(out / "tables" / "findings.parquet").set_index("measure")["mean"]
    assert "hysteresis_gap_area" in findings.index


def test_wandb_offline_run_holds_curves_findings_and_verdicts(judged, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from circuit_plasticity.study.trackers import log_results

    out, _ = judged
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    where = log_results(out, "wandb", name="test-run")
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    tables = {
        p.name.split("_")[0]: json.loads(p.read_text()) for p in run_dir.glob("files/media/table/*.json")
    }
    logged = {tuple(row[:2]) for row in tables["verdicts"]["data"]}  # finding, verdict
    verdicts = pd.read_parquet(out / "tables" / "verdicts.parquet")
    assert {(r.finding, r.verdict) for r in verdicts.itertuples()} == logged
    columns = tables["findings"]["columns"]
    got = {row[columns.index("measure")]: row[columns.index("mean")] for row in tables["findings"]["data"]}
    findings = pd.read_parquet(out / "tables" / "findings.parquet").set_index("measure")["mean"]
    assert got["score_clean"] == pytest.approx(findings["score_clean"])
    history = next(run_dir.glob("run-*.wandb")).read_bytes()  # the offline run as W&B stores it
    assert b"seed0/clean/clean_score" in history and b"verdict/localization" in history and where


def test_mlflow_file_store_run_holds_curves_findings_verdicts(judged, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from circuit_plasticity.study.trackers import log_results

    out, _ = judged
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    log_results(out, "mlflow", name="test-run")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("circuit-plasticity").experiment_id])
    findings = pd.read_parquet(out / "tables" / "findings.parquet").set_index("measure")["mean"]
    assert run.data.metrics["finding.score_clean"] == pytest.approx(findings["score_clean"])
    history = client.get_metric_history(run.info.run_id, "seed0.clean.clean_score")
    assert sorted(m.step for m in history) == [10, 20]
    verdicts = pd.read_parquet(out / "tables" / "verdicts.parquet")
    assert {f"verdict.{r.finding}": r.verdict for r in verdicts.itertuples()}.items() <= run.data.tags.items()


def test_an_unknown_backend_is_refused_before_any_work(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuit_plasticity",
            "judge",
            "--out",
            str(tmp_path / "o"),
            "--log",
            "tensorboard",
            "--base",
            "toy-ioi",
            "--clean",
            "toy-gt",
            "--poisoned",
            "toy-ioi",
            "--retrain",
            "toy-gt",
        ],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 2
        and "--log must be one of wandb, mlflow" in r.stderr
        and not (tmp_path / "o").exists()
    )
