"""Weight patching (compare/origin.py) and the parameter partition (analysis/parameters.py).

References written from each architecture's own weight layout (not from the autograd labels):
GPT-2's fused c_attn columns [q | k | v] and c_proj rows per head, Llama's q/k/v/o projections
with K/V heads shared by consecutive query heads, the toy's nn.Linear q/k/v rows and o columns.
"""

from __future__ import annotations

import pytest
import torch

from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.parameters import parameter_partition
from circuit_plasticity.compare.origin import weight_patched_scores
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


def _perturbed(spec: str, seed: int = 1):
    other = load_model(str(spec))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.model.original_model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return other


def _score(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return task_score(end_logits(model(batch.tokens), batch), batch)


@pytest.mark.parametrize("arch", ["gpt2", "neox", "llama", "qwen2", "gemma2"])
def test_partition_covers_every_entry_once_and_all_components_give_the_source(arch, arch_dirs):
    target, source = load_model(str(arch_dirs[arch])), _perturbed(arch_dirs[arch])
    part = parameter_partition(target.model)
    n = len(part.components)
    for name, label in part.labels.items():
        assert label.min() >= 0 and label.max() < n, name
    owned = torch.zeros(n, dtype=torch.long)
    for label in part.labels.values():
        owned += torch.bincount(label.flatten().long(), minlength=n)
    assert (owned > 0).all(), [c.name for c, k in zip(part.components, owned, strict=True) if k == 0]
    assert sum(int(label.numel()) for label in part.labels.values()) == int(owned.sum())
    batch = task_batch(target, "ioi", n=12, seed=3, split="test")
    everything = [c.name for c in part.components]
    before = _score(target.model, batch)
    scores = weight_patched_scores(target.model, source.model, batch, [[], everything], part)
    assert torch.equal(scores[0], before)
    torch.testing.assert_close(scores[1], _score(source.model, batch), rtol=0, atol=1e-5)
    assert torch.equal(_score(target.model, batch), before)  # restored bit for bit


def _gpt2_head_by_hand(target_dir, source_dir, layer: int, head: int, out):
    """GPT-2 with one head's q, k, v columns of c_attn (and biases) and its c_proj rows taken
    from the source: the layout of transformers' GPT2Attention, written out."""
    from transformers import AutoModelForCausalLM

    t = AutoModelForCausalLM.from_pretrained(target_dir)
    s = AutoModelForCausalLM.from_pretrained(source_dir)
    d_model, n_heads = t.config.n_embd, t.config.n_head
    d = d_model // n_heads
    ta, sa = t.transformer.h[layer].attn, s.transformer.h[layer].attn
    with torch.no_grad():
        for part in range(3):  # q, k, v blocks of the fused projection
            cols = slice(part * d_model + head * d, part * d_model + (head + 1) * d)
            ta.c_attn.weight[:, cols] = sa.c_attn.weight[:, cols]
            ta.c_attn.bias[cols] = sa.c_attn.bias[cols]
        rows = slice(head * d, (head + 1) * d)
        ta.c_proj.weight[rows] = sa.c_proj.weight[rows]
    t.save_pretrained(out)
    return out


def test_gpt2_head_weights_equal_a_model_edited_by_hand(arch_dirs, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    target = load_model(str(arch_dirs["gpt2"]))
    source_dir = tmp_path / "source"
    shutil.copytree(arch_dirs["gpt2"], source_dir)
    hf = AutoModelForCausalLM.from_pretrained(arch_dirs["gpt2"])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    hf.save_pretrained(source_dir)
    source = load_model(str(source_dir))
    batch = task_batch(target, "ioi", n=12, seed=3, split="test")
    for layer, head in [(0, 1), (1, 3)]:
        edited = tmp_path / f"edited-{layer}-{head}"
        shutil.copytree(arch_dirs["gpt2"], edited)
        _gpt2_head_by_hand(arch_dirs["gpt2"], source_dir, layer, head, edited)
        expected = _score(load_model(str(edited)).model, batch)
        got = weight_patched_scores(target.model, source.model, batch, [[f"a{layer}.h{head}"]])[0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_grouped_query_heads_own_q_and_o_and_kv_groups_own_k_and_v(arch_dirs):
    """Llama, 4 query heads, 2 K/V heads: a query head's entries are its q_proj rows and o_proj
    columns; K/V group g owns k_proj and v_proj rows g*d:(g+1)*d."""
    loaded = load_model(str(arch_dirs["llama"]))
    part = parameter_partition(loaded.model)
    names = {c.name for c in part.components}
    assert {"a0.kv0", "a0.kv1", "a1.kv0", "a1.kv1"} <= names
    d = 64 // 4
    attn = "layers.1.self_attn"
    labels = {k.replace("._original_component", ""): v for k, v in part.labels.items()}
    q = next(v for k, v in labels.items() if k.endswith(f"{attn}.q_proj.weight"))
    o = next(v for k, v in labels.items() if k.endswith(f"{attn}.o_proj.weight"))
    k = next(v for k, v in labels.items() if k.endswith(f"{attn}.k_proj.weight"))
    h2 = part.index("a1.h2")
    assert (q[2 * d : 3 * d] == h2).all() and (q[: 2 * d] != h2).all()
    assert (o[:, 2 * d : 3 * d] == h2).all()
    assert (k[d : 2 * d] == part.index("a1.kv1")).all()


def test_toy_head_weights_equal_a_copy_edited_by_hand(tmp_path):
    """The toy (nn.Linear q/k/v/o): head h owns rows h*d:(h+1)*d of q, k, v (and biases) and
    columns h*d:(h+1)*d of o."""
    target, source = load_model("toy-ioi"), _perturbed("toy-ioi")
    edited = load_model("toy-ioi")
    d = edited.model.cfg.d_head
    layer, head = 1, 2
    rows = slice(head * d, (head + 1) * d)
    ea, sa = edited.model.blocks[layer].attn, source.model.blocks[layer].attn
    with torch.no_grad():
        for name in "qkv":
            getattr(ea, name).weight[rows] = getattr(sa, name).weight[rows]
            getattr(ea, name).bias[rows] = getattr(sa, name).bias[rows]
        ea.o.weight[:, rows] = sa.o.weight[:, rows]
    batch = task_batch(target, "ioi", n=16, seed=3, split="test")
    got = weight_patched_scores(target.model, source.model, batch, [[f"a{layer}.h{head}"]])[0]
    torch.testing.assert_close(got, _score(edited.model, batch), rtol=0, atol=1e-5)
