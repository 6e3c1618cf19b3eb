"""`export`: our models and checkpoints load with transformers alone and compute what ours do."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.models.export import export_model
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


def _transformers_logits(folder, tokens):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        return model(tokens).logits


def test_toy_gt_and_a_fine_tune_of_it_load_with_transformers_alone(tmp_path):
    ours = load_model("toy-gt", "cpu")
    with torch.no_grad():  # a fine-tune: weights that differ from the shipped ones
        ours.model.blocks[1].mlp.fc_out.weight.mul_(1.3)
    ours.save(tmp_path / "tuned")
    batch = task_batch(ours, "greater-than", n=24)
    for spec in ("toy-gt", str(tmp_path / "tuned")):
        out = export_model(spec, tmp_path / f"hf-{len(spec)}")
        with torch.no_grad():
            want = load_model(spec, "cpu").model(batch.tokens)
        assert torch.allclose(_transformers_logits(out, batch.tokens), want, atol=1e-4)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(out)
        text = "The war lasted from the year 1732 to the year 17"
        assert tok(text)["input_ids"] == ours.tokenizer.encode(text)[0]


def test_checkpoint_of_a_hub_model_exports_onto_its_architecture(tiny_gpt2_dir, tmp_path, word_tokenizer):
    loaded = load_model(str(tiny_gpt2_dir), "cpu")
    with torch.no_grad():
        loaded.model.original_model.transformer.h[0].attn.c_proj.weight.mul_(0.5)
    loaded.save(tmp_path / "ckpt")  # our hub-weights checkpoint format
    out = export_model(str(tmp_path / "ckpt"), tmp_path / "hf")
    tokens = torch.randint(0, 200, (3, 9))
    with torch.no_grad():
        want = load_model(str(tmp_path / "ckpt"), "cpu").model(tokens)
    assert torch.allclose(_transformers_logits(out, tokens), want, atol=1e-4)


def test_attention_only_toy_is_refused_with_the_reason(tmp_path):
    with pytest.raises(UserError, match="attention-only"):
        export_model("toy-ioi", tmp_path / "x")
    r = subprocess.run(
        [sys.executable, "-m", "circuit_plasticity", "export", "toy-ioi", "--out", str(tmp_path / "y")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "attention-only" in r.stderr and not (tmp_path / "y").exists()
