"""Edge attribution and edge patching on every architecture (GPT-2, Pythia, Llama, Mistral,
Qwen2, Gemma-2), held to references written from the definitions.

Grouped-query models are attributed on their ungrouped twin (`models.ungroup`), built in memory
from the loaded model. The references do not use it: the twin the tests write to disk
(tests/arch_models.ungrouped_twin_dir, a separate construction) for the per-edge derivative, and
the grouped model itself for what removing a query head's k or v edges does (its own pattern or
output recomputed from the corrupted K/V, every other head left alone)."""

from __future__ import annotations

import pytest
import torch
from arch_models import ARCHITECTURES, ungrouped_twin_dir
from reference import edge_derivative

from circuit_plasticity.analysis.attribution import edge_attribution, edge_patched_scores
from circuit_plasticity.analysis.graph import Graph
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.errors import UserError
from circuit_plasticity.models.load import load_model
from circuit_plasticity.models.ungroup import is_grouped, ungrouped_twin
from circuit_plasticity.training.evaluate import task_batch

GQA = ("llama", "mistral", "qwen2", "gemma2")


@pytest.fixture(scope="module")
def models(tmp_path_factory, arch_dirs):
    """Per architecture: (loaded model, its in-memory twin, the disk twin, a batch)."""
    root = tmp_path_factory.mktemp("arch-twins")
    out = {}
    for arch in ARCHITECTURES:
        path = arch_dirs[arch]
        loaded = load_model(str(path), device="cpu")
        disk = loaded
        if arch in GQA:
            disk = load_model(str(ungrouped_twin_dir(path, root / f"{arch}-twin")), device="cpu")
        out[arch] = (loaded, ungrouped_twin(loaded), disk, task_batch(loaded, "ioi", n=8, seed=0))
    return out


def _score(model, tokens, batch, hooks=()):
    with torch.no_grad():
        return task_score(end_logits(model.run_with_hooks(tokens, fwd_hooks=list(hooks)), batch), batch)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_twin_computes_the_same_function_with_one_kv_head_per_query_head(arch, models):
    loaded, twin, disk, batch = models[arch]
    assert is_grouped(loaded.model) == (arch in GQA)
    assert not is_grouped(twin.model)
    names = [f"blocks.{lay}.attn.hook_z" for lay in range(2)] + ["blocks.1.attn.hook_pattern"]
    with torch.no_grad():
        logits, cache = loaded.model.run_with_cache(batch.tokens, names_filter=lambda n: n in names)
        twin_logits, twin_cache = twin.model.run_with_cache(batch.tokens, names_filter=lambda n: n in names)
        _, disk_cache = disk.model.run_with_cache(
            batch.tokens, names_filter=lambda n: n == "blocks.1.attn.hook_k"
        )
        twin_k = twin.model.run_with_cache(batch.tokens, names_filter=lambda n: n == "blocks.1.attn.hook_k")[
            1
        ]
    assert torch.allclose(logits, twin_logits, atol=1e-5)
    for name in names:
        assert torch.allclose(cache[name], twin_cache[name], atol=1e-6), name
    assert torch.allclose(twin_k["blocks.1.attn.hook_k"], disk_cache["blocks.1.attn.hook_k"], atol=1e-6)


def test_grouped_models_are_refused_without_the_twin(models):
    loaded, _, _, batch = models["qwen2"]
    with pytest.raises(UserError, match="ungrouped_twin"):
        edge_attribution(loaded.model, batch)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_eap_equals_the_autograd_derivative_on_every_architecture(arch, models):
    """Head q/k/v, MLP and logit edges, including k and v edges into both query heads that share
    one K/V head, against d/d eps of moving only that receiver's input (on the disk twin)."""
    _, twin, disk, batch = models[arch]
    table = edge_attribution(twin.model, batch, chunk=4).edge_table().set_index("edge")
    picks = [
        "input->a0.h1<q>",
        "a0.h0->a1.h0<k>",
        "a0.h0->a1.h1<k>",
        "a0.h2->a1.h2<v>",
        "a0.h2->a1.h3<v>",
        "m0->a1.h2<q>",
        "a0.h1->m0" if arch != "neox" else "input->m0",  # Pythia: attention and MLP in parallel
        "m0->m1",
        "a1.h3->logits",
        "m1->logits",
    ]
    for name in picks:
        sender, receiver = name.split("->")
        expected = edge_derivative(disk.model, batch, sender, receiver)
        assert table.loc[name, "score"] == pytest.approx(expected, rel=2e-3, abs=1e-6), (arch, name)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_all_edges_is_the_clean_run_and_none_the_corrupted_run(arch, models):
    loaded, twin, _, batch = models[arch]
    graph = Graph.from_model(twin.model)
    scores = edge_patched_scores(
        twin.model, batch, [graph.real.clone(), torch.zeros_like(graph.real)], chunk=4
    )
    assert torch.allclose(scores[0], _score(loaded.model, batch.tokens, batch), atol=1e-5)
    assert torch.allclose(scores[1], _score(loaded.model, batch.corrupted, batch), atol=1e-4)


def _native_reference(model, batch, layer: int, head: int, which: str) -> torch.Tensor:
    """The model's own answer to "every edge into query head `head`'s q (k, v) input removed":
    that input taken from the corrupted run. Under grouped K/V, where one K (V) head feeds the
    whole group, the head's own pattern (output z) is recomputed with the shared K (V) from the
    corrupted run and patched alone, the other heads of its group untouched."""
    name = f"blocks.{layer}.attn.hook_{which}"
    with torch.no_grad():
        _, corrupt = model.run_with_cache(batch.corrupted, names_filter=lambda n: n == name)
    if which == "q" or not is_grouped(model):
        target, own = name, corrupt[name]
    else:
        target = f"blocks.{layer}.attn.hook_{'pattern' if which == 'k' else 'z'}"
        with torch.no_grad(), model.hooks(fwd_hooks=[(name, lambda act, hook: corrupt[name])]):
            _, cache = model.run_with_cache(batch.tokens, names_filter=lambda n: n == target)
        own = cache[target]

    def put(act, hook):
        act = act.clone()
        if target.endswith("pattern"):  # [n, heads, query, key]
            act[:, head] = own[:, head]
        else:  # [n, pos, heads, d_head]
            act[:, :, head] = own[:, :, head]
        return act

    return _score(model, batch.tokens, batch, [(target, put)])


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_removing_a_receivers_edges_matches_the_model_itself(arch, which, models):
    """Edge patching's decomposition (every sender's output, the post-attention norm of Gemma-2
    included) against the model: all edges into one head input removed = that input corrupted.
    Heads 0 and 1 share one K/V head in the grouped models."""
    loaded, twin, _, batch = models[arch]
    graph = Graph.from_model(twin.model)
    for head in (0, 1):
        mask = graph.real.clone()
        mask[:, graph.backward_index(f"a1.h{head}<{which}>")] = False
        (got,) = edge_patched_scores(twin.model, batch, [mask])
        want = _native_reference(loaded.model, batch, 1, head, which)
        assert torch.allclose(got, want, atol=1e-4), (arch, which, head)


def test_a_post_norm_with_an_output_bias_is_refused_before_any_work(tmp_path, bpe_tokenizer):
    """Gemma-2 with an attention output bias: b_O * w / rms changes from run to run and belongs
    to no head, so the edge graph would not be exact; fast depth refuses up front (exit 2)."""
    from arch_models import _config
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    from circuit_plasticity.analysis.attribution import check_edge_graph
    from circuit_plasticity.analysis.pipeline import analyze_model
    from circuit_plasticity.errors import Unsupported

    config = _config("gemma2", bpe_tokenizer.vocab_size)
    config.attention_bias = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("o_proj.bias"):
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "m")
    PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer.backend, bos_token="<|endoftext|>"
    ).save_pretrained(tmp_path / "m")
    loaded = load_model(str(tmp_path / "m"), device="cpu")
    with pytest.raises(Unsupported, match="output bias"):
        check_edge_graph(ungrouped_twin(loaded).model)
    batch = task_batch(loaded, "ioi", n=8, seed=0)
    with pytest.raises(UserError, match="depth fast.*output bias.*--depth full"):
        analyze_model(loaded, batch, depth="fast")
