"""The phase runner: spec validation, bitwise resume after SIGKILL, NaN guard, checkpoints."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.models.load import load_model
from circuit_plasticity.models.store import load_weights
from circuit_plasticity.spec import from_mapping, load_yaml
from circuit_plasticity.training.protocol import TrainSpec

SMALL_SPEC = textwrap.dedent("""\
    model: toy-ioi
    task: ioi
    seed: 0
    checkpoint_every_steps: 2
    eval: {every_steps: 3, n: 40, lm_docs: 10}
    phases:
      - name: clean
        data: {n: 48, seed: 0}
        epochs: 2
        batch_size: 16
        lr: 3.0e-4
      - name: poisoned
        data: {n: 48, poison: subject, fraction: 1.0, seed: 1}
        epochs: 3
        batch_size: 16
        lr: 3.0e-4
        schedule: cosine
    """)


def run_cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "circuit_plasticity", *args], capture_output=True, text=True, **kw
    )


def final_weights(run: Path, phase: str) -> dict[str, torch.Tensor]:
    import json

    name = json.loads((run / "phases" / phase / "final.json").read_text())["checkpoint"]
    return load_weights(run / "phases" / phase / name / "model.safetensors")


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SMALL_SPEC)
    straight = run_cli("train", str(spec), "--out", str(tmp_path / "a"), "--quiet")
    assert straight.returncode == 0, straight.stderr

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "circuit_plasticity",
            "train",
            str(spec),
            "--out",
            str(tmp_path / "b"),
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = tmp_path / "b" / "phases" / "poisoned" / "step-000004"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.exists(), "the run ended or stalled before the checkpoint to kill after"
    assert not (tmp_path / "b" / "phases" / "poisoned" / "final.json").exists()

    resumed = run_cli("train", str(spec), "--out", str(tmp_path / "b"), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    for phase in ("clean", "poisoned"):
        a, b = final_weights(tmp_path / "a", phase), final_weights(tmp_path / "b", phase)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    import pandas as pd

    ma = pd.read_parquet(tmp_path / "a" / "metrics.parquet")
    mb = pd.read_parquet(tmp_path / "b" / "metrics.parquet")
    pd.testing.assert_frame_equal(ma, mb)
    # the poisoned phase moved the model toward S, and the evaluation saw it
    end = ma.groupby("phase").tail(1).set_index("phase")
    assert end.loc["poisoned", "poisoned_p_target"] > end.loc["clean", "poisoned_p_target"]
    assert end.loc["poisoned", "clean_score"] < end.loc["clean", "clean_score"]


def test_checkpoints_load_through_the_loading_api(tmp_path):
    from circuit_plasticity.training.loop import run_protocol

    spec = from_mapping(
        TrainSpec,
        {
            "checkpoint_every_steps": 0,
            "eval": {"every_steps": 50, "n": 20, "lm_docs": 0},
            "phases": [{"name": "clean", "data": {"n": 16}, "epochs": 1, "batch_size": 8}],
        },
    )
    run_protocol(spec, tmp_path / "run", progress=False)
    ckpt = tmp_path / "run" / "phases" / "clean" / "step-000002"
    loaded = load_model(str(ckpt))
    assert loaded.kind == "native"
    assert (ckpt / "train_state.safetensors").is_file() and not list(ckpt.glob("*.pt"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from circuit_plasticity.training import loop

    calls = {"n": 0}
    real = loop.next_token_loss

    def poisoned_loss(*args):
        calls["n"] += 1
        value = real(*args)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(loop, "next_token_loss", poisoned_loss)
    spec = from_mapping(
        TrainSpec,
        {
            "checkpoint_every_steps": 1,
            "eval": {"every_steps": 50, "n": 20, "lm_docs": 0},
            "phases": [{"name": "clean", "data": {"n": 40}, "epochs": 1, "batch_size": 8}],
        },
    )
    with pytest.raises(loop.TrainingDiverged, match="step 3"):
        loop.run_protocol(spec, tmp_path / "run", progress=False)
    kept = sorted(p.name for p in (tmp_path / "run" / "phases" / "clean").glob("step-*"))
    assert kept == ["step-000001", "step-000002"]
    assert not (tmp_path / "run" / "phases" / "clean" / "final.json").exists()


@pytest.mark.parametrize(
    "patch, message",
    [
        ("learnin_rate: 0.1", "unknown key 'phases[0].learnin_rate' (line 8)"),
        ("lr: fast", "'phases[0].lr' (line 8) must be float"),
        ("epochs: 0", "phases[0].epochs: must be positive"),
        ("schedule: wavy", "phases[0].schedule"),
        ("start_from: nowhere", "phases[0].start_from"),
    ],
)
def test_bad_specs_exit_2_naming_the_key(tmp_path, patch, message):
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        textwrap.dedent("""\
        model: toy-ioi
        task: ioi
        phases:
          - name: clean
            data: {n: 16}
            epochs: 1
            batch_size: 8
        """)
        + f"    {patch}\n"
    )
    r = run_cli("train", str(spec), "--out", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert not (tmp_path / "run").exists()


def test_unknown_top_level_key_is_rejected(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("model: toy-ioi\nmodle: gpt2\nphases: []\n")
    with pytest.raises(UserError, match="unknown key 'modle' \\(line 2\\)"):
        from_mapping(TrainSpec, load_yaml(spec), source=str(spec))


def test_train_only_moves_only_the_chosen_heads(tmp_path):
    from circuit_plasticity.models.native import stable_state_dict
    from circuit_plasticity.training.loop import run_protocol

    spec = from_mapping(
        TrainSpec,
        {
            "eval": {"every_steps": 50, "n": 20, "lm_docs": 0},
            "phases": [
                {
                    "name": "repair",
                    "data": {"n": 32, "poison": "subject"},
                    "epochs": 1,
                    "batch_size": 8,
                    "lr": 1.0e-3,
                    "train_only": ["a1.h0", "a2.h3"],
                }
            ],
        },
    )
    run_protocol(spec, tmp_path / "run", progress=False)
    before = stable_state_dict(load_model("toy-ioi").model)
    after = load_weights(tmp_path / "run" / "phases" / "repair" / "step-000004" / "model.safetensors")
    d = 32
    moved = set()
    for name, tensor in before.items():
        diff = after[name] != tensor
        if not diff.any():
            continue
        layer, proj = int(name.split(".")[1]), name.split(".")[3]
        axis_rows = (
            diff.any(dim=0)
            if (proj == "o" and name.endswith("weight"))
            else (diff if diff.dim() == 1 else diff.any(dim=1))
        )
        heads = {int(i) // d for i in axis_rows.nonzero().flatten()}
        moved |= {(layer, h) for h in heads}
        assert proj in "qkvo" and name.startswith("blocks.") and not name.endswith("o.bias")
    assert moved == {(1, 0), (2, 3)}


def test_train_only_needs_heads_and_no_weight_decay():
    with pytest.raises(UserError, match="train_only"):
        from_mapping(TrainSpec, {"phases": [{"name": "r", "train_only": ["a1.h0"], "weight_decay": 0.1}]})
    with pytest.raises(UserError, match=r"a\{LAYER\}\.h\{HEAD\}"):
        from circuit_plasticity.training.masking import parse_heads

        parse_heads(["mlp2"])


def test_train_only_names_are_one_spelling_and_bad_ones_fail_at_load():
    """A spec with the older 'L.H' spelling means the same as one with names (so a run saved
    with either resumes under the other); a name that parses to nothing fails with the spec."""
    import json
    from dataclasses import asdict

    from circuit_plasticity.spec import same_spec

    old = {"phases": [{"name": "r", "train_only": ["1.0", " m1"]}]}
    new = from_mapping(TrainSpec, {"phases": [{"name": "r", "train_only": ["a1.h0", "m1"]}]})
    assert from_mapping(TrainSpec, old).phases[0].train_only == ["a1.h0", "m1"]
    assert same_spec(TrainSpec, old, new) and same_spec(TrainSpec, json.loads(json.dumps(asdict(new))), new)
    with pytest.raises(UserError, match=r"phases\[0\]\.train_only.*'mlp2' names no component"):
        from_mapping(TrainSpec, {"phases": [{"name": "r", "train_only": ["mlp2"]}]})
