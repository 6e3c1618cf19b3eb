"""Loading API: the toy, local HF directories, our checkpoints; clear errors; deterministic toy."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.models.load import load_model


def test_hf_directory_matches_transformers(tiny_gpt2_dir):
    from transformers import GPT2LMHeadModel

    loaded = load_model(str(tiny_gpt2_dir))
    ids = torch.tensor([[0, 5, 9, 11, 40]])
    reference = GPT2LMHeadModel.from_pretrained(tiny_gpt2_dir).eval()
    with torch.no_grad():
        assert torch.allclose(loaded.model(ids), reference(ids).logits, atol=1e-4)
    assert loaded.kind == "hub" and loaded.tokenizer.bos_id == 0


def test_hub_checkpoint_round_trip(tiny_gpt2_dir, tmp_path):
    loaded = load_model(str(tiny_gpt2_dir))
    with torch.no_grad():
        for p in loaded.model.original_model.parameters():
            p.add_(0.01)
    loaded.save(tmp_path / "ckpt")
    back = load_model(str(tmp_path / "ckpt"))
    ids = torch.tensor([[0, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(back.model(ids), loaded.model(ids))


def test_toy_loads_and_round_trips(tmp_path):
    toy = load_model("toy-ioi")
    assert toy.kind == "native" and toy.tokenizer.word_id("Mary") is not None
    toy.save(tmp_path / "copy")
    back = load_model(str(tmp_path / "copy"))
    ids = torch.tensor([[toy.tokenizer.bos_id, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(back.model(ids), toy.model(ids))
    assert (tmp_path / "copy" / "model.safetensors").is_file()


def test_unknown_names_and_missing_weights_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(UserError, match="does not exist"):
        load_model(str(tmp_path / "missing") + "/")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        load_model(str(tmp_path / "empty"))


def test_offline_gpt2_fails_fast_with_exit_2(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "circuit_plasticity", "eval", "gpt2", "--n", "10"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2
    assert "gpt2" in r.stderr and "cache" in r.stderr and "Traceback" not in r.stderr


def test_short_toy_training_is_deterministic():
    from circuit_plasticity.models.native import stable_state_dict
    from circuit_plasticity.training.pretrain import ToyTrainConfig, train_toy

    cfg = ToyTrainConfig(seed=3, steps=6, batch_size=8, eval_every=6)
    a = stable_state_dict(train_toy(cfg, progress=False)["model"])
    b = stable_state_dict(train_toy(cfg, progress=False)["model"])
    c = stable_state_dict(
        train_toy(ToyTrainConfig(seed=4, steps=6, batch_size=8, eval_every=6), progress=False)["model"]
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_shipped_toy_half_solves_ioi_on_held_out_prompts():
    """Chance is 0.5. The model card measures 0.80 [0.76, 0.83] on 500 prompts; 0.65 sits well
    below that CI and well above chance, and <= 0.95 keeps the room to improve that fine-tuning
    needs (GPT-2 small is likewise only partly right)."""
    from circuit_plasticity.training.evaluate import evaluate_model, task_batch

    toy = load_model("toy-ioi")
    result = evaluate_model(toy, task_batch(toy, "ioi", n=300, seed=1, split="test"))
    assert 0.65 <= result["correct"] <= 0.95
    assert result["score_ci_low"] > 1.0


def test_run_with_a_missing_model_writes_nothing(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuit_plasticity",
            "run",
            "--model",
            "gpt2",
            "--out",
            str(tmp_path / "run"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 2 and "not in the local Hugging Face cache" in r.stderr
    assert not (tmp_path / "run").exists()
