"""Every analysis on every architecture (GPT-2, Pythia/GPT-NeoX, Llama, Qwen2, Gemma-2), each
held to a plain reference on that architecture: TransformerLens's own patching, the slow path
patching reference, DLA summing to the (pre-soft-cap) logit difference, and for grouped-query
attention an ungrouped twin (same function, one K/V head per query head)."""

from __future__ import annotations

import json

import pytest
import torch
from arch_models import ARCHITECTURES, build_model_dir, ungrouped_twin_dir
from reference import slow_mlp_path_patch_to_logits, slow_path_patch

from circuit_plasticity.analysis.heads import head_dla, mlp_dla, norm_apply, unembed_direction
from circuit_plasticity.analysis.hooks import kv_groups, kv_head, stacked_param, ungroup_kv
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.patching import (
    Receivers,
    mlp_labels,
    patch_each_head,
    path_patch,
    z_cache,
)
from circuit_plasticity.components import Component, component_name
from circuit_plasticity.models.load import load_model
from circuit_plasticity.tasks.build import build_dataset
from circuit_plasticity.tasks.encode import encode_examples

GQA = ("llama", "mistral", "qwen2", "gemma2")


@pytest.fixture(scope="module")
def loaded(arch_dirs):
    out = {}
    for arch, path in arch_dirs.items():
        model = load_model(str(path), device="cpu")
        examples, _ = build_dataset("ioi", 12, seed=0, tokenizer=model.tokenizer, split="test")
        out[arch] = (model, encode_examples(examples, model.tokenizer))
    return out


def test_kv_groups_name_the_query_heads_that_share_k_and_v(loaded):
    for arch, (m, _) in loaded.items():
        expected = [(0, 1), (2, 3)] if arch in GQA else [(0,), (1,), (2,), (3,)]
        assert kv_groups(m.model) == expected, arch
        ungrouped = ungroup_kv(m.model, m.model.W_K, head_axis=1)  # [layers, heads, d, e]
        for h in range(4):
            assert torch.equal(ungrouped[:, h], m.model.W_K[:, kv_head(m.model, h)])


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_activation_patching_matches_transformer_lens(arch, loaded):
    from transformer_lens import patching

    m, batch = loaded[arch]
    model = m.model
    clean_z = z_cache(model, batch.tokens)
    ours = patch_each_head(model, batch, batch.corrupted, clean_z, heads_per_pass=3).mean(1)
    _, clean_cache = model.run_with_cache(batch.tokens)

    def metric(logits):
        return task_score(end_logits(logits, batch), batch).mean()

    theirs = patching.get_act_patch_attn_head_out_all_pos(model, batch.corrupted, clean_cache, metric)
    assert ours.std() > 1e-3  # not vacuous: heads differ
    torch.testing.assert_close(ours.view_as(theirs), theirs.to(ours.dtype), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@torch.no_grad()
def test_dla_of_heads_mlps_and_rest_sums_to_the_logit_difference(arch, loaded):
    """heads + MLPs + embeddings + output biases (+ final-norm bias, unembedding bias) equal the
    logit difference before any soft-capping; the rest is read off the run, not derived."""
    m, batch = loaded[arch]
    model = m.model
    logits, cache = model.run_with_cache(batch.tokens)
    rows, end = torch.arange(len(batch)), batch.end
    scale = cache["ln_final.hook_scale"][rows, end]
    direction = unembed_direction(model, batch)
    rest = cache["blocks.0.hook_resid_pre"][rows, end]  # embeddings (scaled, positional)
    b_o = stacked_param(model, "b_O")
    if b_o is not None:  # no post-attention norm: each layer adds its output bias raw
        rest = rest + b_o.sum(0)
    other = (norm_apply(model, model.ln_final, rest, scale) * direction).sum(-1)
    if getattr(model.ln_final, "bias", None) is not None:
        other = other + direction @ model.ln_final.bias
    other = other + model.b_U[batch.answer_id] - model.b_U[batch.wrong_id]
    head_part = head_dla(model, batch).sum((1, 2))
    mlp_part = float(mlp_dla(model, batch).dla.sum()) if mlp_labels(model) else 0.0
    pre_cap = cache["unembed.hook_out"]  # Gemma-2 soft-caps after this
    diff = task_score(end_logits(pre_cap, batch), batch)
    assert abs(float((head_part + other).mean()) + mlp_part - float(diff.mean())) < 1e-4
    assert head_part.abs().max() > 1e-3  # heads do contribute


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_path_patching_matches_the_slow_reference(arch, loaded):
    m, batch = loaded[arch]
    model = m.model
    senders = [(0, 0), (0, 3), *mlp_labels(model)[:1]]
    fast = path_patch(model, batch, Receivers(), senders)
    torch.testing.assert_close(fast[0], slow_path_patch(model, batch, (0, 0)), atol=1e-4, rtol=0)
    torch.testing.assert_close(fast[1], slow_path_patch(model, batch, (0, 3)), atol=1e-4, rtol=0)
    torch.testing.assert_close(fast[2], slow_mlp_path_patch_to_logits(model, batch, 0), atol=1e-4, rtol=0)
    receiver = Receivers(heads=((1, 2),), input="q")
    fast_q = path_patch(model, batch, receiver, [(0, 1)])
    slow_q = slow_path_patch(model, batch, (0, 1), receiver.heads, "q", "end")
    torch.testing.assert_close(fast_q[0], slow_q, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", GQA)
@pytest.mark.parametrize("kind", ["k", "v"])
def test_grouped_k_v_receivers_equal_the_ungrouped_twin(arch, kind, loaded, arch_dirs, tmp_path):
    """A K/V receiver is one query head: on the GQA model it must equal the same receiver on the
    twin whose K/V weights are repeated per query head (plain per-head hook_k/hook_v patching)."""
    m, batch = loaded[arch]
    twin = load_model(str(ungrouped_twin_dir(arch_dirs[arch], tmp_path / "twin")), device="cpu")
    assert kv_groups(twin.model) == [(0,), (1,), (2,), (3,)]
    with torch.no_grad():
        torch.testing.assert_close(twin.model(batch.tokens), m.model(batch.tokens), atol=1e-4, rtol=0)
    position = "s1+1" if kind == "k" else "s2"
    receiver = Receivers(heads=((1, 0), (1, 3)), input=kind, position=position)
    senders = [(0, 1), (0, 2)]
    ours = path_patch(m.model, batch, receiver, senders)
    clean = task_score(end_logits(m.model(batch.tokens), batch), batch)
    assert (ours - clean).abs().max() > 1e-4  # the path carries an effect
    for i, sender in enumerate(senders):
        slow = slow_path_patch(twin.model, batch, sender, receiver.heads, kind, position)
        torch.testing.assert_close(ours[i], slow, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama", "gemma2"])
def test_train_only_moves_only_the_chosen_heads_and_whole_kv_groups(arch, arch_dirs, tmp_path):
    """Fine-tuning with train_only on each architecture: exactly the chosen query heads move;
    a shared K/V head moves only when its whole group is chosen; nothing else moves."""
    from circuit_plasticity.spec import from_mapping
    from circuit_plasticity.training.loop import run_protocol
    from circuit_plasticity.training.masking import frozen_kv_heads
    from circuit_plasticity.training.protocol import TrainSpec

    chosen = [(1, 0), (1, 1), (0, 2)]
    spec = from_mapping(
        TrainSpec,
        {
            "model": str(arch_dirs[arch]),
            "eval": {"every_steps": 50, "n": 12, "lm_docs": 0},
            "phases": [
                {
                    "name": "repair",
                    "data": {"n": 16},
                    "epochs": 1,
                    "batch_size": 8,
                    "lr": 1.0e-2,
                    "train_only": [component_name(c) for c in chosen],
                }
            ],
        },
    )
    run_protocol(spec, tmp_path / "run", progress=False)
    before = load_model(str(arch_dirs[arch]), device="cpu").model
    step = sorted((tmp_path / "run" / "phases" / "repair").glob("step-*"))[-1]
    after = load_model(str(step), device="cpu").model
    moved_q = {
        (lay, h)
        for lay in range(2)
        for h in range(4)
        if not torch.equal(before.W_Q[lay, h], after.W_Q[lay, h])
    }
    moved_o = {
        (lay, h)
        for lay in range(2)
        for h in range(4)
        if not torch.equal(before.W_O[lay, h], after.W_O[lay, h])
    }
    assert moved_q == moved_o == set(chosen)
    groups = kv_groups(before)
    moved_kv = {
        (lay, g)
        for lay in range(2)
        for g in range(len(groups))
        if not torch.equal(before.W_V[lay, g], after.W_V[lay, g])
    }
    whole = {
        (lay, g)
        for lay in range(2)
        for g, members in enumerate(groups)
        if all((lay, h) in chosen for h in members)
    }
    assert moved_kv == whole
    frozen = {Component.parse(h) for h in frozen_kv_heads(before, [component_name(c) for c in chosen])}
    assert frozen == {(lay, h) for lay, h in chosen if (lay, kv_head(before, h)) not in moved_kv}
    changed = {
        n
        for n, p in after.original_model.named_parameters()
        if not torch.equal(p, dict(before.original_model.named_parameters())[n])
    }
    shared = ("mlp", "norm", "ln", "embed", "wte", "wpe", "lm_head", "o._original_component.bias")
    assert changed and not [n for n in changed if any(word in n for word in shared)]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cross_model_patching_equals_transformer_lens_with_the_other_models_cache(
    arch, loaded, arch_dirs, tmp_path
):
    """CMAP(A -> B) is TransformerLens's activation patching of B's run with A's cache; weight
    change is zero for B against itself and positive per head where A differs."""
    from transformer_lens import patching

    from circuit_plasticity.compare.cmap import cross_model_patch
    from circuit_plasticity.compare.weights import weight_change

    b, batch = loaded[arch]
    a = load_model(str(build_model_dir(tmp_path / "a", arch, b.tokenizer.backend, seed=1)), device="cpu")
    ours = cross_model_patch(a.model, b.model, batch, "z", ("all",))
    _, cache_a = a.model.run_with_cache(batch.tokens)
    score_b = task_score(end_logits(b.model(batch.tokens), batch), batch).mean()

    def metric(logits):
        return task_score(end_logits(logits, batch), batch).mean() - score_b

    theirs = patching.get_act_patch_attn_head_out_all_pos(b.model, batch.tokens, cache_a, metric)
    torch.testing.assert_close(
        torch.tensor(ours.delta.values, dtype=torch.float32).view_as(theirs),
        theirs.float(),
        atol=1e-4,
        rtol=0,
    )
    pattern = cross_model_patch(a.model, b.model, batch, "pattern", ("all",))
    theirs = patching.get_act_patch_attn_head_pattern_all_pos(b.model, batch.tokens, cache_a, metric)
    got = torch.tensor(pattern.delta.values, dtype=torch.float32).view_as(theirs)
    torch.testing.assert_close(got, theirs.float(), atol=1e-4, rtol=0)
    same = weight_change(b.model, b.model)
    assert (same.weight_change == 0).all()
    differ = weight_change(a.model, b.model)
    assert (differ.weight_change_rel > 0).all() and len(differ) == 2 * 4 + 2 * (not b.model.cfg.attn_only)


def _cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """The console script's entry point in-process: exit code, stderr and stdout."""
    import sys

    from circuit_plasticity.cli import main

    monkeypatch.setattr(sys, "argv", ["circuit-plasticity", *argv])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.err, captured.out


BAD = {
    "bert": "encoder-only model, BertForMaskedLM",
    "t5": "sequence-to-sequence (encoder-decoder) model, T5ForConditionalGeneration",
    "ctrl": "cannot load CTRLLMHeadModel",
    "unknown": "transformers cannot load this model directory",
    "chars": "0 of 100 names as single tokens",
}


@pytest.fixture(scope="module")
def bad_dirs(tmp_path_factory, bpe_tokenizer):
    from arch_models import build_bad_dir

    root = tmp_path_factory.mktemp("bad")
    return {kind: build_bad_dir(root / kind, kind, bpe_tokenizer.backend) for kind in BAD}


@pytest.mark.parametrize("kind", list(BAD))
@pytest.mark.parametrize("command", ["eval", "analyze", "run"])
def test_unusable_models_exit_2_naming_the_problem_and_write_nothing(
    kind, command, bad_dirs, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    argv = {
        "eval": ["eval", str(bad_dirs[kind]), "--n", "20"],
        "analyze": ["analyze", str(bad_dirs[kind]), "--out", str(out), "--n", "20"],
        "run": ["run", "--model", str(bad_dirs[kind]), "--out", str(out), "--quiet"],
    }[command]
    code, err, _ = _cli(argv, capsys, monkeypatch)
    assert code == 2 and BAD[kind] in err and "Traceback" not in err
    assert not out.exists()


def test_a_refused_model_never_shows_a_traceback_from_the_console_script(bad_dirs):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "circuit_plasticity", "eval", str(bad_dirs["ctrl"]), "--n", "10"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "CTRLLMHeadModel" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_analyze_runs_end_to_end_and_names_shared_kv_heads(arch, arch_dirs, tmp_path, capsys, monkeypatch):
    import pandas as pd

    code, _, out = _cli(
        ["analyze", str(arch_dirs[arch]), "--out", str(tmp_path / "a"), "--n", "24"], capsys, monkeypatch
    )
    assert code in (0, None)
    assert ("query heads (0,1) (2,3) share K/V" in out) == (arch in GQA)
    # grouped K/V: EAP-IG runs on the ungrouped twin, one k/v receiver per query head
    graph = json.loads((tmp_path / "a" / "edge_circuit.json").read_text())
    assert all(f"a0.h0->a1.h{h}<{x}>" in graph["edges"] for h in range(4) for x in "kv")
    heads = pd.read_parquet(tmp_path / "a" / "heads.parquet")
    kv = heads[heads.measure == "kv_head"].sort_values(["layer", "head"])
    groups = kv_groups(load_model(str(arch_dirs[arch]), device="cpu").model)
    assert [int(v) for v in kv.value[:4]] == [g for g, members in enumerate(groups) for _ in members]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_joint_set_patching_equals_full_hooked_passes(arch, loaded):
    """Whatever path `patch_each_set` takes on an architecture (the fast path on GPT-2, hooks
    elsewhere), it equals full hooked forward passes on joint head sets."""
    from circuit_plasticity.analysis import fastpath
    from circuit_plasticity.analysis.patching import _patch_each_set_hooked, patch_each_set

    m, batch = loaded[arch]
    assert fastpath.supported(m.model) == (arch == "gpt2")
    source = z_cache(m.model, batch.corrupted)
    sets = [[(0, 1)], [(1, 2)], [(0, 0), (1, 3)], [(0, 2), (1, 1), (1, 0)], []]
    for positions in (None, batch.positions["s2"]):
        fast = patch_each_set(m.model, batch, batch.tokens, source, sets, positions)
        slow = _patch_each_set_hooked(m.model, batch, batch.tokens, source, sets, positions, 2, "z")
        torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@torch.no_grad()
def test_eval_equals_the_transformers_model_itself(arch, arch_dirs, capsys, monkeypatch):
    """`eval --json` through the bridge reports the score the plain transformers model gives
    (soft-capped logits included on Gemma-2)."""
    import json

    from transformers import AutoModelForCausalLM

    from circuit_plasticity.training.evaluate import task_batch

    code, _, out = _cli(["eval", str(arch_dirs[arch]), "--n", "16", "--json"], capsys, monkeypatch)
    assert code in (0, None)
    reported = json.loads(out)["score"]
    hf = AutoModelForCausalLM.from_pretrained(arch_dirs[arch], attn_implementation="eager").eval()
    batch = task_batch(load_model(str(arch_dirs[arch]), device="cpu"), "ioi", 16, 0, "test")
    direct = task_score(end_logits(hf(batch.tokens).logits, batch), batch).mean()
    assert abs(reported - float(direct)) < 1e-4


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_head_profile_discovery_and_circuit_scores_run_on_every_architecture(arch, loaded):
    """The analyze pipeline short of EAP-IG (which the end-to-end test covers where it runs):
    one row per query head, its K/V head, a circuit of real heads, self-consistent scores."""
    from circuit_plasticity.analysis.discovery import discover_circuit
    from circuit_plasticity.analysis.faithfulness import circuit_score, evaluate_circuit
    from circuit_plasticity.analysis.profile import head_profile

    m, batch = loaded[arch]
    heads, score = head_profile(m.model, m.tokenizer, batch)
    assert len(heads) == 8 and heads[["copy_score", "dla", "induction"]].notna().all().all()
    assert list(heads.sort_values(["layer", "head"]).kv_head) == [kv_head(m.model, h) for h in range(4)] * 2
    records = {(int(r["layer"]), int(r["head"])): r for r in heads.to_dict("records")}
    found = discover_circuit(m.model, batch, arch, attention=records)
    keep = found.circuit.head_set()  # heads and, since MLPs are components, MLPs (layer, -1)
    from circuit_plasticity.analysis.hooks import component_labels

    assert keep <= set(component_labels(m.model))
    assert {h for h in keep if h[1] >= 0} <= {(lay, h) for lay in range(2) for h in range(4)}
    scores = evaluate_circuit(m.model, batch, found.circuit)
    assert abs(scores.model_score - score) < 1e-4
    if keep:
        assert abs(scores.circuit_score - circuit_score(m.model, batch, keep)) < 1e-3


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_output_patching_carries_a_heads_whole_change(arch, arch_dirs):
    """A copy of the model whose only change is one head's weights (its q and o, through the
    train_only masks): patching that head's output into the original gives the copy's scores."""
    from circuit_plasticity.compare.cmap import patch_outputs
    from circuit_plasticity.training.masking import head_gradient_masks

    b = load_model(str(arch_dirs[arch]), device="cpu")
    a = load_model(str(arch_dirs[arch]), device="cpu")
    examples, _ = build_dataset("ioi", 12, seed=0, tokenizer=b.tokenizer, split="test")
    batch = encode_examples(examples, b.tokenizer)
    masks = head_gradient_masks(a, ["1.2"])
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param, mask in masks.items():
            param.add_(0.5 * mask * torch.randn(param.shape, generator=gen))
    own = task_score(end_logits(a.model(batch.tokens), batch), batch)
    assert not torch.allclose(own, task_score(end_logits(b.model(batch.tokens), batch), batch), atol=1e-3)
    patched = patch_outputs(b.model, a.model, batch, [[(1, 2)]])[0]
    torch.testing.assert_close(patched, own, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_train_only_an_mlp_moves_all_of_its_weights_and_nothing_else(arch, arch_dirs, tmp_path):
    """Targeted repair of an MLP trains every one of its weights (the gate of a gated MLP too)."""
    import re

    from circuit_plasticity.spec import from_mapping
    from circuit_plasticity.training.loop import run_protocol
    from circuit_plasticity.training.protocol import TrainSpec

    phase = {"name": "repair", "data": {"n": 16}, "epochs": 1, "batch_size": 8, "lr": 1.0e-2}
    spec = from_mapping(
        TrainSpec,
        {
            "model": str(arch_dirs[arch]),
            "eval": {"every_steps": 50, "n": 12, "lm_docs": 0},
            "phases": [{**phase, "train_only": ["m1"]}],
        },
    )
    run_protocol(spec, tmp_path / "run", progress=False)
    before = dict(load_model(str(arch_dirs[arch]), device="cpu").model.original_model.named_parameters())
    step = sorted((tmp_path / "run" / "phases" / "repair").glob("step-*"))[-1]
    after = dict(load_model(str(step), device="cpu").model.original_model.named_parameters())
    changed = {n for n, p in after.items() if not torch.equal(p, before[n])}
    expected = {n for n in before if "mlp" in n and re.search(r"(layers|\bh)\.1\.", n)}
    assert expected and changed == expected
