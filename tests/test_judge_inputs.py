"""`judge` records what it was given: a rerun with another model or option is refused, or with
--redo makes again exactly what depends on the change; the report names every judged model."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.models.load import load_model
from circuit_plasticity.models.toy import TOY_DIR
from circuit_plasticity.study.inputs import RECORD, check_inputs, weights_digest
from circuit_plasticity.study.judge import JudgeOptions, SeedModels


@pytest.fixture()
def models(tmp_path):
    out = {}
    for name in ("clean", "poisoned", "retrain"):
        out[name] = str(shutil.copytree(TOY_DIR, tmp_path / name))
    return out


def _perturb(path: str) -> None:
    """Other weights at the same path (a retrained checkpoint written over the old one)."""
    loaded = load_model(path)
    with torch.no_grad():
        loaded.model.blocks[0].attn.o.weight.mul_(1.01)
    loaded.save(path)


def _seed(models) -> list[SeedModels]:
    return [SeedModels(seed=0, base="toy-ioi", **models)]


def test_the_digest_follows_the_weights_not_the_path(models, tmp_path):
    assert weights_digest(models["clean"]) == weights_digest("toy-ioi") == weights_digest(str(TOY_DIR))
    before = weights_digest(models["clean"])
    _perturb(models["clean"])
    assert weights_digest(models["clean"]) != before
    assert weights_digest(load_model(models["clean"])) != weights_digest(load_model("toy-ioi"))


def test_changed_weights_or_options_are_refused_and_redo_forgets_only_what_changed(models, tmp_path):
    out = tmp_path / "judged"
    options = JudgeOptions(n=40)
    check_inputs(_seed(models), options, out)
    check_inputs(_seed(models), options, out)  # the same inputs: a resume
    seed_dir = out / "seeds" / "seed-0"
    for part in ("analysis/base", "analysis/clean", "analysis/poisoned", "compare"):
        (seed_dir / part).mkdir(parents=True, exist_ok=True)
        (seed_dir / part / "marker").write_text("x")
    _perturb(models["clean"])
    changed = r"seed 0 clean was .*clean, now .*clean \(same path, other weights\)"
    with pytest.raises(UserError, match=changed):
        check_inputs(_seed(models), options, out)
    with pytest.raises(UserError, match=r"option n was 40, now 60.*--redo"):
        check_inputs(_seed(models), JudgeOptions(n=60), tmp_path / "judged")
    assert (seed_dir / "analysis" / "clean" / "marker").is_file()  # a refusal deletes nothing
    check_inputs(_seed(models), options, out, redo=True)
    assert not (seed_dir / "analysis" / "clean").exists() and not (seed_dir / "compare").exists()
    assert (seed_dir / "analysis" / "base" / "marker").is_file()  # unchanged: kept
    assert (seed_dir / "analysis" / "poisoned" / "marker").is_file()
    saved = json.loads((out / RECORD).read_text())
    assert saved["models"]["0"]["clean"]["sha256"] == weights_digest(models["clean"])
    check_inputs(_seed(models), JudgeOptions(n=60), out, redo=True)  # an option: everything
    assert not (seed_dir / "analysis").exists()


def test_an_old_judge_output_without_a_record_is_refused(models, tmp_path):
    out = tmp_path / "old"
    (out / "seeds" / "seed-0" / "analysis" / "base").mkdir(parents=True)
    with pytest.raises(UserError, match="no record"):
        check_inputs(_seed(models), JudgeOptions(), out)


@pytest.mark.slow
def test_judge_cli_refuses_a_rerun_with_a_changed_model_and_the_report_lists_the_models(models, tmp_path):
    out = tmp_path / "out"

    def judge(*extra):
        args = ["judge", "--out", str(out), "--base", "toy-ioi", "--n", "40", "--min-seeds", "1"]
        args += [f"--{p}={m}" for p, m in models.items()]
        return subprocess.run(
            [sys.executable, "-m", "circuit_plasticity", *args, *extra], capture_output=True, text=True
        )

    first = judge()
    assert first.returncode == 0, first.stderr[-2000:]
    page = (out / "report" / "index.html").read_text()
    assert all(m in page for m in models.values()) and "toy-ioi" in page
    findings = (out / "tables" / "findings.parquet").read_bytes()
    _perturb(models["poisoned"])
    again = judge()
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "seed 0 poisoned" in again.stderr and "--redo" in again.stderr
    assert (out / "tables" / "findings.parquet").read_bytes() == findings  # nothing rewritten
    redone = judge("--redo")
    assert redone.returncode == 0, redone.stderr[-2000:]
    record = json.loads((out / RECORD).read_text())
    assert record["models"]["0"]["poisoned"]["sha256"] == weights_digest(models["poisoned"])
