"""`judge` on checkpoints from anywhere: bad input exits 2 with a clear message, writes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from circuit_plasticity.models.toy import TOY_DIR


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuit_plasticity", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """Four copies of the toy (distinct paths, same weights) and one whose tokenizer differs."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name in ("clean", "poisoned", "retrain", "control"):
        out[name] = str(shutil.copytree(TOY_DIR, root / name))
    other = shutil.copytree(TOY_DIR, root / "other-tokenizer")
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab)[10], sorted(vocab)[11]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # same size, two words trade ids
    (other / "tokenizer.json").write_text(json.dumps(tok))
    out["other"] = str(other)
    return out


def _judge(out, base="toy-ioi", **models) -> subprocess.CompletedProcess:
    args = ["judge", "--out", str(out), "--base", base]
    for phase, path in models.items():
        args += [f"--{phase}", path]
    return cli(*args)


def _refused(r: subprocess.CompletedProcess, out, *words: str) -> None:
    assert r.returncode == 2, r.stderr[-1500:]
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert not out.exists()


def test_missing_model(copies, tmp_path):
    out = tmp_path / "out"
    r = _judge(out, clean=copies["clean"], poisoned=str(tmp_path / "nowhere"), retrain=copies["retrain"])
    _refused(r, out, "nowhere")


def test_missing_phase(copies, tmp_path):
    out = tmp_path / "out"
    _refused(_judge(out, clean=copies["clean"], poisoned=copies["poisoned"]), out, "--retrain")


def test_same_model_twice(copies, tmp_path):
    out = tmp_path / "out"
    r = _judge(out, clean=copies["clean"], poisoned=copies["clean"], retrain=copies["retrain"])
    _refused(r, out, "clean and poisoned models are the same model")


def test_architectures_differ(copies, tmp_path, tiny_gpt2_dir):
    out = tmp_path / "out"
    r = _judge(out, clean=copies["clean"], poisoned=str(tiny_gpt2_dir), retrain=copies["retrain"])
    _refused(r, out, "architecture")


def test_tokenizers_differ(copies, tmp_path):
    out = tmp_path / "out"
    r = _judge(out, clean=copies["clean"], poisoned=copies["other"], retrain=copies["retrain"])
    _refused(r, out, "different tokenizer")


def test_seeds_file_with_an_unknown_key(copies, tmp_path):
    spec = tmp_path / "seeds.yaml"
    spec.write_text(f"- base: toy-ioi\n  clean: {copies['clean']}\n  poisonned: x\n")
    out = tmp_path / "out"
    _refused(cli("judge", "--out", str(out), "--seeds-file", str(spec)), out, "poisonned")


def test_unequal_numbers_of_seeds(copies, tmp_path):
    out = tmp_path / "out"
    r = cli(
        "judge", "--out", str(out), "--base", "toy-ioi",
        "--clean", copies["clean"], "--clean", copies["control"],
        "--poisoned", copies["poisoned"], "--retrain", copies["retrain"],
    )  # fmt: skip
    _refused(r, out, "--poisoned models for 2 seeds")
