"""The hook-free forward (models/plain.py) computes what the bridge computes: the same logits to
rounding and the same gradients on the same tensors, on the attention-only toy and on the toys
with MLPs, under a LoRA parametrisation too; and everything it does not support (another
architecture, a model with hooks attached) runs through the bridge unchanged."""

from __future__ import annotations

import pytest
import torch

from circuit_plasticity.compare.origin import weight_patched_scores
from circuit_plasticity.models.load import load_model
from circuit_plasticity.models.native import build_native
from circuit_plasticity.models.plain import logits, plain_logits, plain_supported
from circuit_plasticity.training.loss import next_token_loss

TOYS = ("toy-ioi", "toy-gt", "toy-ioi-large")


def _tokens(model, seed: int = 0, shape=(6, 13)) -> torch.Tensor:
    return torch.randint(0, model.cfg.d_vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", TOYS)
def test_plain_logits_and_gradients_equal_the_bridges(name):
    model = load_model(name).model
    assert plain_supported(model)
    tokens = _tokens(model)
    mask = torch.ones_like(tokens, dtype=torch.bool)

    def grads(forward) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        next_token_loss(forward(tokens), tokens, mask).backward()
        return {n: p.grad.clone() for n, p in model.original_model.named_parameters()}

    with torch.no_grad():
        torch.testing.assert_close(plain_logits(model, tokens), model(tokens), rtol=1e-4, atol=1e-4)
    mine, theirs = grads(lambda t: plain_logits(model, t)), grads(model)
    assert mine.keys() == theirs.keys()
    for key in mine:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-3, atol=1e-5, msg=key)


@pytest.mark.parametrize("name", TOYS)
def test_end_only_logits_equal_the_full_forwards_rows_at_each_end(name):
    """With END positions given, the last block attends from END alone and only END is
    unembedded: each prompt's row equals the bridge's logits at its own END, whichever position
    that is (the first, the last, any between), and a different END gives a different row."""
    model = load_model(name).model
    tokens = _tokens(model, seed=1, shape=(7, 13))
    end = torch.tensor([12, 5, 0, 7, 12, 3, 9])
    rows = torch.arange(7)
    with torch.no_grad():
        full = model(tokens)
        torch.testing.assert_close(plain_logits(model, tokens, end), full[rows, end], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(logits(model, tokens, end), full[rows, end], rtol=1e-4, atol=1e-4)
        moved = end - 1 + (end == 0)  # every END one position earlier (0 one later)
        assert not torch.allclose(plain_logits(model, tokens, moved), full[rows, end], atol=1e-2)


def test_a_lora_parametrisation_applies_in_the_plain_forward():
    from circuit_plasticity.training.lora import attach
    from circuit_plasticity.training.protocol import LoraSpec

    loaded = load_model("toy-gt")
    adapters = attach(loaded, LoraSpec(rank=2, alpha=4.0), None, seed=0)
    with torch.no_grad():
        for *_, delta in adapters.sites:
            delta.B.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    tokens = _tokens(loaded.model)
    with torch.no_grad():
        adapted = loaded.model(tokens)
        assert not torch.allclose(adapted, load_model("toy-gt").model(tokens), atol=1e-3)
        torch.testing.assert_close(plain_logits(loaded.model, tokens), adapted, rtol=1e-4, atol=1e-4)


def test_unsupported_models_and_hooked_models_run_through_the_bridge(monkeypatch):
    loaded = load_model("toy-ioi")
    rotary = build_native({**loaded.config, "positional_embedding_type": "rotary", "rotary_dim": 8})
    assert not plain_supported(rotary)
    with torch.no_grad():
        torch.testing.assert_close(logits(rotary, _tokens(rotary)), rotary(_tokens(rotary)))
        end = torch.tensor([3, 12, 0, 5, 7, 1])
        want = rotary(_tokens(rotary))[torch.arange(6), end]
        torch.testing.assert_close(logits(rotary, _tokens(rotary), end), want)
    model = loaded.model
    tokens = _tokens(model)
    called = []
    monkeypatch.setattr("circuit_plasticity.models.plain.plain_logits", lambda *a: called.append(1))
    model.blocks[0].attn.hook_z.add_hook(lambda z, hook: z * 0)  # a live edit
    try:
        with torch.no_grad():
            torch.testing.assert_close(logits(model, tokens), model(tokens))
    finally:
        model.reset_hooks()
    assert not called
    handle = model.blocks[1].attn.register_forward_hook(lambda module, args, out: out)  # not a hook point
    try:
        with torch.no_grad():
            logits(model, tokens)
    finally:
        handle.remove()
    assert not called
    with torch.no_grad():
        logits(model, tokens)
    assert called  # and without any hook, the plain path


def test_weight_patching_an_unchanged_component_moves_the_score_by_exactly_zero():
    """Weight patching scores under the plain forward, anchored on the bridge's own score: a
    component whose weights are equal in both models changes nothing, to the bit."""
    from circuit_plasticity.training.evaluate import task_batch

    target, source = load_model("toy-ioi"), load_model("toy-ioi")
    with torch.no_grad():
        dict(source.model.original_model.named_parameters())[
            "layers.2._original_component.attn._original_component.o._original_component.weight"
        ].mul_(1.5)
    batch = task_batch(target, "ioi", n=12, seed=3, split="test")
    scores = weight_patched_scores(target.model, source.model, batch, [[], ["a0.h1"], ["a2.h0"]])
    assert torch.equal(scores[0], scores[1])  # a0.h1 did not change
    assert not torch.allclose(scores[2], scores[0], atol=1e-3)  # a2.h0's output rows did


def test_models_built_from_one_booted_bridge_are_fresh_and_independent():
    """build_native copies one booted bridge per config: each copy equals a fresh boot, and
    weights or hooks given to one reach neither the next copy nor any other."""
    from circuit_plasticity.models.native import _boot_native

    config = load_model("toy-ioi").config
    first, second, fresh = build_native(config), build_native(config), _boot_native(config, 0)
    tokens = _tokens(fresh)
    with torch.no_grad():
        want = fresh(tokens)
        next(first.parameters()).add_(1.0)
        first.blocks[0].attn.hook_z.add_hook(lambda z, hook: z * 0)
        assert not torch.allclose(first(tokens), want)
        assert torch.equal(second(tokens), want)
        assert torch.equal(build_native(config)(tokens), want)
    assert first.cfg is not second.cfg
