"""The ungrouped twin of a grouped-query model: the same function with one K/V head per query
head, so analyses that need a per-query-head K/V input (EAP-IG's k/v receivers, as MIB's
`ungroup_grouped_query_attention`) run on it unchanged.

Built from the loaded Hugging Face module: its config with num_key_value_heads =
num_attention_heads, every parameter shared with the original except the K/V projections,
each of whose heads is repeated for the query heads that read it (the order of `repeat_kv`).
Extra memory: the K/V projections times (query heads / K/V heads): the twin's repeated copies,
beside the original's own.
"""

from __future__ import annotations

import copy

import torch

from circuit_plasticity.errors import Unsupported
from circuit_plasticity.models.load import LoadedModel, boot_bridge

KV_SUFFIXES = ("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")


def n_kv_heads(model) -> int:
    """K/V heads per layer: fewer than query heads under grouped-query attention."""
    return int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)


def is_grouped(model) -> bool:
    return n_kv_heads(model) < int(model.cfg.n_heads)


def ungrouped_twin(loaded: LoadedModel) -> LoadedModel:
    """`loaded` itself when it has one K/V head per query head, else its ungrouped twin."""
    if not is_grouped(loaded.model):
        return loaded
    hf = getattr(loaded.model, "original_model", None)
    config = getattr(hf, "config", None)
    if config is None or not hasattr(config, "num_key_value_heads"):
        raise Unsupported(f"{loaded.name}: cannot ungroup its K/V heads (no Hugging Face config)")
    from transformers import AutoModelForCausalLM

    heads, kv = int(config.num_attention_heads), int(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    state = _hf_names(hf.state_dict())
    if not any(name.endswith(KV_SUFFIXES) for name in state):
        raise Unsupported(
            f"{loaded.name}: cannot ungroup its K/V heads (no separate k_proj/v_proj weights, e.g. a "
            "fused QKV projection)"
        )
    for name, tensor in state.items():
        if name.endswith(KV_SUFFIXES):
            rest = tensor.shape[1:]
            grouped = tensor.detach().view(kv, head_dim, *rest).repeat_interleave(heads // kv, dim=0)
            state[name] = grouped.reshape(heads * head_dim, *rest)
    twin_config = copy.deepcopy(config)
    twin_config.num_key_value_heads = heads
    with torch.device("meta"):
        twin = AutoModelForCausalLM.from_config(twin_config, attn_implementation="eager")
    missing, _ = twin.load_state_dict(state, assign=True, strict=False)
    if [m for m in missing if "lm_head" not in m]:  # the head may be tied to the embeddings
        raise Unsupported(f"{loaded.name}: cannot ungroup its K/V heads (weights not mapped: {missing[:3]})")
    _share_buffers(twin, hf)  # non-persistent buffers (rotary frequencies) are not in the state
    twin.tie_weights()
    twin.eval()
    device = str(loaded.device)
    bridge = boot_bridge(loaded.name, twin_config, twin, _hf_tokenizer(loaded), device)
    bridge.eval()
    return LoadedModel(bridge, loaded.tokenizer, loaded.name, loaded.kind, loaded.config, loaded.base)


def _share_buffers(twin: torch.nn.Module, original: torch.nn.Module) -> None:
    buffers = _hf_names(dict(original.named_buffers()))
    for name, buffer in list(twin.named_buffers()):
        if buffer.is_meta:
            module_name, _, leaf = name.rpartition(".")
            module = twin.get_submodule(module_name) if module_name else twin
            persistent = leaf not in module._non_persistent_buffers_set
            module.register_buffer(leaf, buffers[name], persistent=persistent)


def _hf_names(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face names of a bridged module's tensors (the bridge wraps every submodule as
    `_original_component`; the first of any aliases is kept)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        out.setdefault(name.replace("._original_component", ""), tensor)
    return out


def _hf_tokenizer(loaded: LoadedModel):
    return getattr(loaded.model, "tokenizer", None)
