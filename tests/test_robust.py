"""One writer per directory, workers that die with their parent, bad input refused before any
work: each with real processes (the lock is an OS lock, so only processes can test it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from specs import ONE_PHASE_TRAIN

TRAIN_SPEC = ONE_PHASE_TRAIN


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "circuit_plasticity", *args], capture_output=True, text=True, env=env, **kw
    )


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under `root` with its size and modification time: 'unchanged' made checkable."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def hold(directory: Path) -> subprocess.Popen:
    """Another process that claims `directory` as its writer and keeps it until killed."""
    code = (
        "import sys, time\n"
        "from circuit_plasticity.locks import claim_directory\n"
        f"claim_directory({str(directory)!r})\n"
        "print('held', flush=True)\n"
        "time.sleep(3600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("command", ["train", "run", "sweep", "judge"])
def test_a_second_writer_is_refused_with_the_holders_pid_and_changes_nothing(tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "something.json").write_text("{}")
    holder = hold(out)
    try:
        before = snapshot(out)
        spec = tmp_path / "spec.yaml"
        args = {
            "train": ["train", str(spec), "--out", str(out)],
            "run": ["run", "--out", str(out)],
            "sweep": ["sweep", str(spec), "--out", str(out)],
            "judge": [
                "judge",
                "--base",
                "toy-ioi",
                "--clean",
                "toy-ioi",
                "--poisoned",
                "toy-ioi",
                "--retrain",
                "toy-ioi",
                "--out",
                str(out),
            ],
        }[command]
        spec.write_text(TRAIN_SPEC if command == "train" else "base: {seeds: [0]}\ngrid: {fraction: [0.5]}\n")
        second = cli(*args)
        assert second.returncode == 2, second.stderr[-2000:]
        message = second.stderr.strip().splitlines()
        assert len(message) == 1 and str(holder.pid) in message[0] and "Traceback" not in second.stderr
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_writer_leaves_no_lock(tmp_path):
    from circuit_plasticity.locks import claim_directory, lock_holder, release_directory

    holder = hold(tmp_path)
    assert lock_holder(tmp_path) == holder.pid
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    claim_directory(tmp_path)  # the OS dropped the dead process's lock: no stale lock file
    try:
        assert lock_holder(tmp_path) == os.getpid()
    finally:
        release_directory(tmp_path)


def test_claims_nest_in_one_process_and_end_with_the_outermost_call(tmp_path):
    from circuit_plasticity.locks import _held, claim_directory, writes_directory

    target = tmp_path / "new"

    @writes_directory("out")
    def inner(out: Path) -> None:
        out.mkdir(exist_ok=True)
        claim_directory(out)

    @writes_directory("out")
    def outer(out: Path) -> bool:
        inner(out)
        return out.resolve() in _held  # still held after the inner call returned

    assert outer(target) and target.resolve() not in _held


def test_a_refused_call_leaves_no_directory_behind(tmp_path):
    from circuit_plasticity.errors import UserError
    from circuit_plasticity.locks import claim_directory, writes_directory

    @writes_directory("out")
    def refuse(out: Path) -> None:
        out.mkdir()
        claim_directory(out)
        raise UserError("bad input")

    with pytest.raises(UserError):
        refuse(tmp_path / "new")
    assert not (tmp_path / "new").exists()


WORKER_PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp
from circuit_plasticity.locks import die_with_parent

def child_pid():
    return os.getpid()

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=die_with_parent)
    print(pool.submit(child_pid).result(), flush=True)
    time.sleep(3600)
"""


def test_pool_workers_die_with_their_parent(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(WORKER_PARENT)
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    os.kill(worker, 0)  # alive while its parent is
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(600):  # the kernel's signal (or the watcher's poll) ends it; no speed asserted
        if not Path(f"/proc/{worker}").exists() or "Z" in Path(f"/proc/{worker}/stat").read_text().split()[2]:
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"worker {worker} outlived its parent")


@pytest.mark.slow
def test_two_writers_started_together_never_break_the_run(tmp_path):
    """Two `train`s into one new directory at once: one trains, the other is refused (or, if it
    starts after the first ended, finds the run finished); the metrics are one run's, not two."""
    import pandas as pd

    spec = tmp_path / "spec.yaml"
    spec.write_text(TRAIN_SPEC)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "circuit_plasticity", "train", str(spec), "--out", str(out), "--quiet"]
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in "ab"
    ]
    results = [(p.wait(), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, err in results:
        if code == 2:
            assert "is being written by process" in err and "Traceback" not in err
    once = tmp_path / "once"
    assert cli("train", str(spec), "--out", str(once), "--quiet").returncode == 0
    assert len(pd.read_parquet(out / "metrics.parquet")) == len(pd.read_parquet(once / "metrics.parquet"))
    again = cli("train", str(spec), "--out", str(out), "--quiet")  # the run is whole: resumes to done
    assert again.returncode == 0, again.stderr[-2000:]


def _train(spec_text: str, out: Path):
    from circuit_plasticity.spec import from_mapping, load_yaml
    from circuit_plasticity.training.loop import run_protocol
    from circuit_plasticity.training.protocol import TrainSpec

    path = out.parent / f"{out.name}.yaml"
    path.write_text(spec_text)
    return run_protocol(from_mapping(TrainSpec, load_yaml(path), source=str(path)), out, progress=False)


TWO_EPOCHS = TRAIN_SPEC.replace("epochs: 1", "epochs: 2")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_damaged_checkpoint_is_named_and_retrained_to_the_same_bytes(tmp_path, capsys, damage):
    """A finished run whose final checkpoint was truncated (or lost a file) is not taken as
    finished: the file is named in one line, the phase resumes from the last good checkpoint,
    and every checkpoint file and the metrics come out as the uninterrupted run wrote them."""
    from circuit_plasticity.training.checkpoint import checkpoint_problem

    out = tmp_path / "run"
    first = _train(TWO_EPOCHS, out)
    phase = out / "phases" / "clean"
    final = sorted(phase.glob("step-*"))[-1]
    assert len(list(phase.glob("step-*"))) == 2 and checkpoint_problem(final) is None
    whole = {p.name: p.read_bytes() for p in final.iterdir()}
    victim = final / ("model.safetensors" if damage == "truncate" else "train_state.safetensors")
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    else:
        victim.unlink()
    assert checkpoint_problem(final) is not None and str(victim) in checkpoint_problem(final)
    found = check(out)
    assert found.exit_code == 1 and str(victim) in found.output and found.output.count("damaged:") == 1
    capsys.readouterr()
    again = _train(TWO_EPOCHS, out)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(victim) in warnings[0], warnings
    assert {p.name: p.read_bytes() for p in final.iterdir()} == whole
    pd_equal = again.reset_index(drop=True).equals(first.reset_index(drop=True))
    assert pd_equal
    capsys.readouterr()
    _train(TWO_EPOCHS, out)  # whole now: nothing to say, nothing redone
    assert "warning:" not in capsys.readouterr().err
    assert check(out).exit_code == 0 and "all whole" in check(out).output


def check(directory: Path):
    """`circuit-plasticity check DIRECTORY`, in this process."""
    from typer.testing import CliRunner

    from circuit_plasticity.cli import app

    return CliRunner().invoke(app, ["check", str(directory)])


def test_check_names_a_cut_table_and_a_missing_file_of_a_marked_directory(tmp_path):
    """A directory with a completion marker: a file deleted after it was written, and a table
    cut short, are each named; the untouched directory is whole."""
    import pandas as pd

    from circuit_plasticity.fileio import mark_complete, write_table

    for name in ("heads", "edges"):
        write_table(tmp_path / "analysis" / f"{name}.parquet", pd.DataFrame({"value": [1.0, 2.0]}))
    (tmp_path / "analysis" / "circuit.json").write_text("{}")
    mark_complete(tmp_path / "analysis")
    assert check(tmp_path).exit_code == 0
    heads = tmp_path / "analysis" / "heads.parquet"
    heads.write_bytes(heads.read_bytes()[:40])
    (tmp_path / "analysis" / "edges.parquet").unlink()
    found = check(tmp_path)
    assert found.exit_code == 1
    assert "heads.parquet" in found.output and "edges.parquet is missing" in found.output


TINY_STUDY = Path(__file__).resolve().parent.parent / "experiments" / "tiny-study.yaml"


@pytest.mark.slow
def test_a_damaged_study_is_mended_to_the_uninterrupted_tables(tmp_path, capsys):
    """A finished study with a cut checkpoint, a cut analysis table, a deleted and a garbled
    per-head table: the rerun names each in a line and ends with every table and checkpoint
    equal to the undamaged study's."""
    import shutil

    import pandas as pd

    from circuit_plasticity.api import run_study
    from circuit_plasticity.study.experiment import load_experiment

    spec = load_experiment(TINY_STUDY)
    whole, damaged = tmp_path / "whole", tmp_path / "damaged"
    run_study(spec, whole, progress=False)
    shutil.copytree(whole, damaged)
    seed = damaged / "seeds" / "seed-0"
    checkpoint = sorted((seed / "phases" / "clean").glob("step-*"))[-1] / "model.safetensors"
    heads = seed / "analysis" / "clean" / "heads.parquet"
    for cut in (checkpoint, heads):
        cut.write_bytes(cut.read_bytes()[:64])
    (seed / "compare" / "cmap.parquet").unlink()
    (seed / "compare" / "weights.parquet").write_text("not a table")
    capsys.readouterr()
    run_study(spec, damaged, progress=False)
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    compare = seed / "compare"
    for victim in (checkpoint, heads, compare / "cmap.parquet", compare / "weights.parquet"):
        assert any(str(victim) in line for line in said), (victim, said)
    tables = sorted(p.relative_to(whole) for p in whole.rglob("*.parquet"))
    assert tables == sorted(p.relative_to(damaged) for p in damaged.rglob("*.parquet"))
    for rel in tables:
        assert pd.read_parquet(whole / rel).equals(pd.read_parquet(damaged / rel)), rel
    for weights in whole.rglob("*.safetensors"):
        assert weights.read_bytes() == (damaged / weights.relative_to(whole)).read_bytes()


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie waiting for its reaper does not)."""
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
def test_a_sweep_whose_parent_is_killed_leaves_no_live_writer(tmp_path):
    """kill -9 of a sweep's parent only (not its process group): the pool worker writing the
    point ends too, so the point's directory has no writer left and a rerun may take it."""
    from circuit_plasticity.locks import claim_directory, lock_holder, release_directory

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {TINY_STUDY}\ngrid:\n  fraction: [1.0]\n")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "circuit_plasticity", "sweep", str(sweep), "--out", str(out), "--quiet"]
    parent = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    point = out / "points" / "fraction=1.0"
    while lock_holder(point / "seeds" / "seed-0") is None:  # the worker is training the point
        assert parent.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.2)
    worker = lock_holder(point)
    assert worker is not None and worker != parent.pid
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(3000):  # the kernel's signal ends it at once; minutes mean it never will
        if not alive(worker):
            break
        time.sleep(0.1)
    else:
        os.kill(worker, signal.SIGKILL)
        pytest.fail(f"worker {worker} outlived its parent")
    # no live writer: the directory is free for a rerun, once the kernel has also ended the
    # worker's own pool processes (their parent-death signal is delivered asynchronously)
    from circuit_plasticity.errors import UserError

    for _ in range(1200):
        try:
            claim_directory(point)
            break
        except UserError:
            time.sleep(0.1)
    else:
        pytest.fail(f"{point} is still held by process {lock_holder(point)} after its parent was killed")
    release_directory(point)
