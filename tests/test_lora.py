"""LoRA phases: the adapted model is the model with W0 + (alpha/r) B A written into its weights
(on every architecture), only the chosen components move and by at most rank r, and a resumed
LoRA phase ends in the same bytes as an uninterrupted one."""

from __future__ import annotations

import json

import pytest
import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.models.load import load_model
from circuit_plasticity.models.native import stable_state_dict
from circuit_plasticity.models.store import load_weights
from circuit_plasticity.spec import from_mapping
from circuit_plasticity.training.loop import run_protocol
from circuit_plasticity.training.lora import attach
from circuit_plasticity.training.protocol import LoraSpec, TrainSpec

FROZEN_KINDS = ("emb", "wte", "wpe", "lm_head", "unembed", "head.weight", "norm", "ln")


def _logits(loaded, tokens):
    with torch.no_grad():
        return loaded.model(tokens)


def _check_adapted_equals_merged_by_hand(spec_or_dir: str):
    """Reference: a second copy of the model whose weights are set to W0 + scale * B @ A by
    plain tensor arithmetic, parameter by parameter; its logits must equal the adapted model's."""
    adapted, by_hand = load_model(spec_or_dir, device="cpu"), load_model(spec_or_dir, device="cpu")
    lora = LoraSpec(rank=3, alpha=6.0)
    adapters = attach(adapted, lora, None, seed=0)
    assert adapters.sites, "no weight matrix got an adapter"
    generator = torch.Generator().manual_seed(1)
    params = dict(by_hand.model.original_model.named_parameters())
    for _, _, name, delta in adapters.sites:
        assert delta.mask is None  # every head and MLP chosen: whole matrices adapt
        assert not any(k in name.rsplit(".", 2)[-2].lower() for k in FROZEN_KINDS), name
        with torch.no_grad():
            delta.B.copy_(torch.randn(delta.B.shape, generator=generator) * 0.05)
            params[name].add_((lora.alpha / lora.rank) * delta.B @ delta.A)
    tokens = torch.randint(0, adapted.model.cfg.d_vocab, (2, 7), generator=generator)
    got, want = _logits(adapted, tokens), _logits(by_hand, tokens)
    base = _logits(load_model(spec_or_dir, device="cpu"), tokens)
    assert not torch.allclose(want, base, atol=1e-4)  # the adapters do change the model
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with adapters.merged():  # what a checkpoint saves: plain weights, same function
        torch.testing.assert_close(_logits(adapted, tokens), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_logits(adapted, tokens), want, rtol=1e-5, atol=1e-5)  # back on
    return adapters


def test_adapted_toy_equals_its_weights_merged_by_hand():
    adapters = _check_adapted_equals_merged_by_hand("toy-ioi")
    # toy-ioi is attention-only: exactly q, k, v, o of its 3 layers
    assert sorted(n.replace("._original_component", "") for *_, n, _ in adapters.sites) == sorted(
        f"layers.{layer}.attn.{p}.weight" for layer in range(3) for p in "qkvo"
    )
    mlp = _check_adapted_equals_merged_by_hand("toy-gt")
    assert any(".mlp." in n for *_, n, _ in mlp.sites)


def test_adapted_model_equals_its_weights_merged_by_hand_on_every_architecture(arch_dirs):
    for arch, path in arch_dirs.items():
        adapters = _check_adapted_equals_merged_by_hand(str(path))
        assert len(adapters.sites) >= 2, arch


def _phase_spec(lora: dict, train_only=None, every: int = 0) -> TrainSpec:
    phase = {
        "name": "poisoned",
        "data": {"n": 48, "poison": "subject", "seed": 1},
        "epochs": 2,
        "batch_size": 16,
        "lr": 3.0e-3,
        "schedule": "cosine",
        "lora": lora,
    }
    if train_only:
        phase["train_only"] = train_only
    return from_mapping(
        TrainSpec,
        {
            "checkpoint_every_steps": every,
            "eval": {"every_steps": 2, "n": 20, "lm_docs": 0},
            "phases": [phase],
        },
    )


def _final(run, phase="poisoned"):
    name = json.loads((run / "phases" / phase / "final.json").read_text())["checkpoint"]
    return run / "phases" / phase / name


def test_a_lora_poison_in_one_head_moves_only_that_head_by_at_most_its_rank(tmp_path):
    """Truth by construction: adapters masked to a1.h0 can change only a1.h0's rows of q, k, v
    and its columns of o (toy-ioi: d_head 32), each by a matrix of rank <= 2; biases, norms,
    embeddings and every other head keep their bytes."""
    run_protocol(_phase_spec({"rank": 2, "alpha": 4.0}, ["a1.h0"]), tmp_path / "run", progress=False)
    before = stable_state_dict(load_model("toy-ioi").model)
    after = load_weights(_final(tmp_path / "run") / "model.safetensors")
    heads = slice(0, 32)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert changed and set(changed) <= {f"blocks.1.attn.{p}.weight" for p in "qkvo"}
    for name in changed:
        delta = (after[name] - before[name]).double()
        inside = delta[:, heads] if name.endswith("o.weight") else delta[heads]
        outside = delta.clone()
        if name.endswith("o.weight"):
            outside[:, heads] = 0
        else:
            outside[heads] = 0
        assert torch.count_nonzero(outside) == 0, name
        assert torch.linalg.matrix_rank(inside, rtol=1e-4) <= 2, name


def test_a_resumed_lora_phase_equals_an_uninterrupted_one(tmp_path):
    """A kill after the step-2 checkpoint leaves that checkpoint and nothing after it (checkpoints
    are renamed into place whole): deleting what came later is that state. Resumed, the phase
    must end in the same weights, factors, moments and metrics."""
    spec = _phase_spec({"rank": 4, "alpha": 8.0}, every=2)
    run_protocol(spec, tmp_path / "a", progress=False)
    run_protocol(spec, tmp_path / "b", progress=False)
    phase = tmp_path / "b" / "phases" / "poisoned"
    (phase / "final.json").unlink()
    import shutil

    for later in sorted(phase.glob("step-*"))[1:]:
        shutil.rmtree(later)
    assert [p.name for p in phase.glob("step-*")] == ["step-000002"]
    run_protocol(spec, tmp_path / "b", progress=False)
    for file in ("model.safetensors", "train_state.safetensors"):
        a, b = load_weights(_final(tmp_path / "a") / file), load_weights(_final(tmp_path / "b") / file)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), file
    state = load_weights(_final(tmp_path / "a") / "train_state.safetensors")
    assert any(k.startswith("param::") and k.endswith("lora_B") for k in state)
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()


@pytest.mark.parametrize(
    "lora, message",
    [({"rank": 0}, "rank and alpha must be positive"), ({"targets": ["embed"]}, "'attn' and 'mlp'")],
)
def test_bad_lora_settings_fail_when_the_spec_loads(lora, message):
    with pytest.raises(UserError, match=message):
        _phase_spec(lora).validate("top level", "spec")
