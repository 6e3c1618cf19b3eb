"""Ordinary mistakes end in one line and exit 2, before any work and with nothing written:
each case through the real command line (a subprocess: `main` is what turns errors into lines)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from specs import ONE_PHASE_TRAIN

TRAIN = ONE_PHASE_TRAIN
JUDGE = ["--base", "toy-ioi", "--clean", "c", "--poisoned", "p", "--retrain", "r"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "circuit_plasticity", *args], capture_output=True, text=True, env=env, cwd=cwd
    )


def refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 with one line on stderr (no traceback) that contains every one of `words`."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(lines) == 1, result.stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.mark.parametrize("command", ["run", "train", "sweep", "judge", "analyze"])
def test_out_that_is_a_file_is_refused_and_left_alone(tmp_path, command):
    out = tmp_path / "taken.txt"
    out.write_text("mine")
    spec = tmp_path / "spec.yaml"
    spec.write_text(TRAIN if command == "train" else "grid: {fraction: [0.5]}\n")
    args = {
        "run": ["run"],
        "train": ["train", str(spec)],
        "sweep": ["sweep", str(spec)],
        "judge": ["judge", *JUDGE],
        "analyze": ["analyze", "toy-ioi"],
    }[command]
    refused(cli(*args, "--out", str(out)), str(out), "is a file")
    assert out.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml", "taken.txt"]


def test_data_out_that_is_a_directory_is_refused(tmp_path):
    refused(cli("data", "ioi", "--n", "10", "--out", str(tmp_path)), str(tmp_path), "is a directory")
    assert not list(tmp_path.iterdir())


def test_fraction_without_poison_is_refused(tmp_path):
    out = tmp_path / "d.jsonl"
    refused(cli("data", "ioi", "--n", "10", "--fraction", "0.5", "--out", str(out)), "--fraction", "--poison")
    assert not out.exists()


def test_memory_budget_must_be_positive(tmp_path):
    out = tmp_path / "a"
    refused(cli("analyze", "toy-ioi", "--memory-budget", "-1", "--out", str(out)), "--memory-budget", "> 0")
    assert not out.exists()


def test_a_spec_that_is_not_utf8_is_named(tmp_path):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes("seeds: [0]  # caf\xe9\n".encode("latin-1"))
    refused(cli("run", str(spec), "--out", str(tmp_path / "out")), str(spec), "UTF-8")
    assert not (tmp_path / "out").exists()


def test_debug_shows_the_traceback(tmp_path):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes(b"seeds: [0]  # caf\xe9\n")
    result = cli("--debug", "run", str(spec), "--out", str(tmp_path / "out"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_a_model_file_that_is_not_safetensors_is_named(tmp_path):
    from circuit_plasticity.models.load import load_model

    model = tmp_path / "model"
    load_model("toy-ioi").save(model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated: no longer a safetensors file
    refused(cli("eval", str(model), "--n", "20"), str(weights), "safetensors")


def test_train_only_outside_the_model_fails_before_any_phase_trains(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        TRAIN + "  - name: repair\n    data: {n: 32, seed: 1}\n    epochs: 1\n    batch_size: 16\n"
        "    weight_decay: 0\n    train_only: [a0.h1, a9.h9]\n"
    )
    out = tmp_path / "out"
    refused(cli("train", str(spec), "--out", str(out)), "a9.h9", "repair")
    assert not out.exists()


def test_localization_k_larger_than_the_model_is_refused(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("seeds: [0]\nanalysis: {localization_k: 50}\n")
    refused(cli("run", str(spec), "--out", str(tmp_path / "out")), "localization_k", "50", "12")
    assert not (tmp_path / "out").exists()


def test_judge_k_larger_than_the_model_is_refused(tmp_path):
    out = tmp_path / "out"
    refused(cli("judge", *JUDGE, "--k", "50", "--out", str(out)), "--k", "50", "12")
    assert not out.exists()


def test_run_into_an_unrelated_directory_is_refused(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"jpeg")
    before = tree(out)
    refused(cli("run", "--out", str(out)), str(out), "experiment.json")
    assert tree(out) == before


def test_a_sweep_of_no_points_is_refused(tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text("base: {seeds: [0]}\ngrid: {}\n")
    refused(cli("sweep", str(spec), "--out", str(tmp_path / "out")), "give no points")
    assert not (tmp_path / "out").exists()


def in_small_tmpfs(script: str, options: str) -> subprocess.CompletedProcess:
    """`script` (sh) with a fresh tmpfs mounted at $M (user and mount namespaces: no root needed)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not available here")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PY": sys.executable}
    wrapped = f'M=$(mktemp -d) && mount -t tmpfs -o {options} tmpfs "$M" && {script}'
    return subprocess.run(["unshare", "-rm", "sh", "-c", wrapped], capture_output=True, text=True, env=env)


def test_a_read_only_out_is_refused_before_any_work():
    result = in_small_tmpfs('"$PY" -m circuit_plasticity run --out "$M/run"', "ro,size=1m")
    refused(result, "cannot write", "Read-only")


def test_a_full_disk_is_one_line_that_says_what_to_free():
    result = in_small_tmpfs(
        '"$PY" -m circuit_plasticity data ioi --n 3000 --split train --out "$M/d.jsonl"; '
        'rc=$?; ls -A "$M"; exit $rc',
        "size=64k",
    )
    line = refused(result, "free disk space")
    assert "d.jsonl" in line and result.stdout.strip() == ""  # no half-written file or temp left


def test_ctrl_c_says_what_was_saved_and_how_to_resume(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(TRAIN.replace("epochs: 1", "epochs: 50"))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "circuit_plasticity", "train", str(spec), "--out", str(out), "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a shell's background job ignores SIGINT, and Python then installs no handler for it:
        # the command under test gets Ctrl-C as a terminal delivers it, however pytest was started
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    import time

    while not list(out.glob("phases/clean/step-*")):  # a checkpoint is saved: now interrupt
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    assert str(out) in last and "same command" in last and "resume" in last


def test_an_existing_empty_out_stays_empty_when_the_model_is_missing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = cli("run", "--model", str(tmp_path / "no-such-model"), "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "no-such-model" in result.stderr.splitlines()[-1]
    assert not list(out.iterdir())  # neither experiment.json nor a lock file


def test_a_toy_schedule_no_longer_than_its_warm_up_is_refused_before_training(tmp_path):
    out = tmp_path / "toy"
    result = cli("toy-model", "train", "--model", "toy-gt", "--schedule-steps", "100", "--out", str(out))
    refused(result, "--schedule-steps", "200 warm-up")
    assert not out.exists()


@pytest.mark.parametrize("p", ["1", "-0.1"])
def test_a_head_dropout_outside_0_to_1_is_refused_before_training(tmp_path, p):
    out = tmp_path / "toy"
    result = cli("toy-model", "train", "--model", "toy-gt", "--head-dropout", p, "--out", str(out))
    refused(result, "--head-dropout", "below 1")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, named",
    [
        (["--mix", "giver=0.5,stroy=0.5"], "stroy"),
        (["--mix", "giver=0.5,story=0.4"], "sum to 1"),
        (["--mix", "giver0.5"], "kind=weight"),
        (["--save-at", "1500"], "--save-at"),
        (["--d-mlp", "0"], "--d-mlp"),
        (["--mix-from", "1250:giver=0.5,stroy=0.5"], "stroy"),
        (["--mix-from", "giver=1"], "--mix-from"),
        (["--mix-from", "1500:giver=1"], "--mix-from"),
        (["--mix-from", "0:giver=1"], "--mix-from"),
        (["--head-dropout-from", "1500"], "--head-dropout-from"),
    ],
)
def test_a_recipe_variant_that_cannot_be_trained_is_refused_before_training(tmp_path, args, named):
    out = tmp_path / "toy"
    result = cli("toy-model", "train", "--model", "toy-ioi-large", *args, "--out", str(out))
    refused(result, named)
    assert not out.exists()
