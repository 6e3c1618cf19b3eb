"""The patching engine against TransformerLens and against a slow reference; DLA identity."""

from __future__ import annotations

import pytest
import torch
from reference import slow_path_patch

from circuit_plasticity.analysis.heads import head_dla
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.patching import Receivers, patch_each_head, path_patch, z_cache
from circuit_plasticity.models.load import load_model
from circuit_plasticity.tasks.build import build_dataset
from circuit_plasticity.tasks.encode import encode_examples


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-ioi")


def toy_batch(loaded, n=24, seed=0):
    examples, _ = build_dataset("ioi", n, seed=seed, tokenizer=loaded.tokenizer, split="test")
    return encode_examples(examples, loaded.tokenizer)


@pytest.fixture(scope="module")
def gpt2_and_batch(tiny_gpt2_dir):
    loaded = load_model(str(tiny_gpt2_dir))
    return loaded, toy_batch(loaded, n=16)


def _transformer_lens_head_patch(model, batch):
    from transformer_lens import patching

    _, clean_cache = model.run_with_cache(batch.tokens)

    def metric(logits):
        return task_score(end_logits(logits, batch), batch).mean()

    return patching.get_act_patch_attn_head_out_all_pos(model, batch.corrupted, clean_cache, metric)


def _ours_head_patch(model, batch):
    clean_z = z_cache(model, batch.tokens)
    scores = patch_each_head(model, batch, batch.corrupted, clean_z, heads_per_pass=5)
    return scores.mean(1).view(model.cfg.n_layers, model.cfg.n_heads)


def test_activation_patching_matches_transformer_lens_on_toy(toy):
    batch = toy_batch(toy)
    ours, theirs = _ours_head_patch(toy.model, batch), _transformer_lens_head_patch(toy.model, batch)
    assert ours.std() > 1e-3  # the comparison is not vacuous
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=1e-4, rtol=0)


def test_activation_patching_matches_transformer_lens_on_gpt2(gpt2_and_batch):
    loaded, batch = gpt2_and_batch
    ours, theirs = _ours_head_patch(loaded.model, batch), _transformer_lens_head_patch(loaded.model, batch)
    torch.testing.assert_close(ours, theirs.to(ours.dtype), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "receiver",
    [
        Receivers(),
        Receivers(heads=((2, 0), (2, 3)), input="q", position="end"),
        Receivers(heads=((1, 2),), input="v", position="s2"),
        Receivers(heads=((2, 1),), input="k", position="s1+1"),
    ],
)
def test_batched_path_patching_equals_slow_reference(toy, receiver):
    batch = toy_batch(toy, n=12)
    senders = [(0, 0), (0, 1), (0, 3), (1, 0), (1, 2), (2, 1)]
    fast = path_patch(toy.model, batch, receiver, senders, heads_per_pass=4)
    for i, sender in enumerate(senders):
        slow = slow_path_patch(toy.model, batch, sender, receiver.heads, receiver.input, receiver.position)
        torch.testing.assert_close(fast[i], slow, atol=1e-4, rtol=0)
    clean = task_score(end_logits(toy.model(batch.tokens), batch), batch)
    assert (fast - clean).abs().max() > 1e-3  # some path matters


def test_path_patching_on_gpt2_with_mlps(gpt2_and_batch):
    loaded, batch = gpt2_and_batch
    receiver = Receivers(heads=((1, 2),), input="q")
    fast = path_patch(loaded.model, batch, receiver, [(0, 0), (0, 3)])
    for i, sender in enumerate([(0, 0), (0, 3)]):
        slow = slow_path_patch(loaded.model, batch, sender, receiver.heads, "q", "end")
        torch.testing.assert_close(fast[i], slow, atol=1e-4, rtol=0)


@torch.no_grad()
def test_direct_attributions_sum_to_the_logit_difference(toy):
    """heads + embeddings + attention biases + final-norm bias + unembed bias = logit diff."""
    model, batch = toy.model, toy_batch(toy)
    from circuit_plasticity.analysis.heads import final_norm_apply, unembed_direction

    dla = head_dla(model, batch)  # [n, layers, heads]
    _, cache = model.run_with_cache(batch.tokens)
    rows = torch.arange(len(batch))
    scale = cache["ln_final.hook_scale"][rows, batch.end]
    direction = unembed_direction(model, batch)
    other = cache["hook_embed"][rows, batch.end] + cache["hook_pos_embed"][rows, batch.end]
    other = other + model.b_O.sum(0)
    rest = (final_norm_apply(model, other, scale) * direction).sum(-1)
    rest = rest + direction @ model.ln_final.bias + (model.b_U[batch.answer_id] - model.b_U[batch.wrong_id])
    logit_diff = task_score(end_logits(model(batch.tokens), batch), batch)
    torch.testing.assert_close(dla.sum((1, 2)) + rest, logit_diff, atol=1e-4, rtol=0)


@pytest.mark.parametrize("which", ["toy", "gpt2"])
@pytest.mark.parametrize("role", [None, "end", "s2"])
def test_fast_path_equals_hook_path_for_head_sets(which, role, toy, gpt2_and_batch):
    """The cache-reusing fast path against full hooked forward passes, on joint sets."""
    from circuit_plasticity.analysis import fastpath
    from circuit_plasticity.analysis.patching import _patch_each_set_hooked, patch_each_set

    loaded, batch = (toy, toy_batch(toy, n=20)) if which == "toy" else gpt2_and_batch
    model = loaded.model
    assert fastpath.supported(model)
    source = z_cache(model, batch.corrupted)
    sets = [[(0, 1)], [(1, 2)], [(model.cfg.n_layers - 1, 3)], [(0, 0), (1, 3)], [(0, 2), (1, 1), (1, 0)], []]
    positions = None if role is None else batch.positions[role]
    fast = patch_each_set(model, batch, batch.tokens, source, sets, positions)
    slow = _patch_each_set_hooked(model, batch, batch.tokens, source, sets, positions, 4, "z")
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)
    if which == "toy":  # the trained model responds to the patches (the random GPT-2 barely does)
        assert (fast - fast[-1]).abs().max() > 1e-3


@torch.no_grad()
def test_head_and_mlp_attributions_sum_to_the_logit_difference_on_gpt2(gpt2_and_batch):
    """With MLPs: heads + MLPs + embeddings + biases = logit diff (means over prompts)."""
    from circuit_plasticity.analysis.heads import final_norm_apply, mlp_dla, unembed_direction

    loaded, batch = gpt2_and_batch
    model = loaded.model
    _, cache = model.run_with_cache(batch.tokens)
    rows = torch.arange(len(batch))
    scale = cache["ln_final.hook_scale"][rows, batch.end]
    direction = unembed_direction(model, batch)
    other = cache["hook_embed"][rows, batch.end] + cache["hook_pos_embed"][rows, batch.end] + model.b_O.sum(0)
    rest = (final_norm_apply(model, other, scale) * direction).sum(-1)
    rest = rest + direction @ model.ln_final.bias + (model.b_U[batch.answer_id] - model.b_U[batch.wrong_id])
    total = head_dla(model, batch).sum((1, 2)).mean() + float(mlp_dla(model, batch).dla.sum()) + rest.mean()
    logit_diff = task_score(end_logits(model(batch.tokens), batch), batch).mean()
    assert abs(float(total - logit_diff)) < 1e-4


def test_mlp_senders_in_path_patching_equal_the_reference(gpt2_and_batch):
    from reference import slow_mlp_path_patch_to_logits

    from circuit_plasticity.analysis.hooks import mlp_labels

    loaded, batch = gpt2_and_batch
    senders = mlp_labels(loaded.model) + [(0, 1)]
    fast = path_patch(loaded.model, batch, Receivers(), senders)
    for i, (layer, _) in enumerate(senders[:-1]):
        torch.testing.assert_close(
            fast[i], slow_mlp_path_patch_to_logits(loaded.model, batch, layer), atol=1e-4, rtol=0
        )
    torch.testing.assert_close(fast[-1], slow_path_patch(loaded.model, batch, (0, 1)), atol=1e-4, rtol=0)


def _one_hooked_run_per_set(model, batch, source, sets, positions):
    """Reference: one plain TransformerLens run per set, each member's output overwritten."""
    from circuit_plasticity.analysis.hooks import mlp_name, z_name

    rows = torch.arange(len(batch))
    out = []
    for members in sets:

        def put(key, head):
            def hook(act, hook):
                act = act.clone()
                where = (slice(None), slice(None)) if positions is None else (rows, positions)
                new = source[key] if head is None else source[key][..., head, :]
                if head is None:
                    act[where] = new[where]
                else:
                    act[(*where, head)] = new[where]
                return act

            return hook

        hooks = [
            (mlp_name(lay), put(mlp_name(lay), None)) if h < 0 else (z_name(lay), put(lay, h))
            for lay, h in members
        ]
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
        out.append(task_score(end_logits(logits, batch), batch))
    return torch.stack(out)


@pytest.mark.parametrize("role", [None, "end", "s2"])
@torch.no_grad()
def test_sets_with_mlps_equal_one_hooked_run_per_set(role, gpt2_and_batch):
    """MLP members on the fast path (first, middle and last layer; alone, with heads, with
    several MLPs) against one plain hooked run per set. The replacement is the corrupted run's
    output plus noise, so that every patch visibly moves the score of the random model."""
    from circuit_plasticity.analysis import fastpath
    from circuit_plasticity.analysis.patching import output_cache, patch_each_set

    loaded, batch = gpt2_and_batch
    model = loaded.model
    assert fastpath.supported(model) and not model.cfg.attn_only
    last = model.cfg.n_layers - 1
    gen = torch.Generator().manual_seed(0)
    source = {
        k: v + torch.randn(v.shape, generator=gen) for k, v in output_cache(model, batch.corrupted).items()
    }
    sets = [
        [(0, -1)],
        [(1, -1)],
        [(last, -1)],
        [(0, 1), (1, -1)],
        [(last, 2), (last, -1)],
        [(0, -1), (last, -1)],
        [],
    ]
    positions = None if role is None else batch.positions[role]
    fast = patch_each_set(model, batch, batch.tokens, source, sets, positions)
    reference = _one_hooked_run_per_set(model, batch, source, sets, positions)
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=0)
    if role != "s2":  # at S2 the last layer's MLP cannot reach END; everywhere else every set moves
        assert (reference[:-1] - reference[-1]).abs().amax(1).min() > 1e-3
