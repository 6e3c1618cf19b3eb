"""Models we build ourselves (the toy): TransformerLens-native, saved under stable names.

The TransformerLens native model's parameter names are an implementation detail of the
library version; on disk we use our own names (nn.Linear-shaped tensors), mapped here in
one table, so a shipped model loads under any TransformerLens version that builds the same
architecture.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import torch

# (TransformerLens native name pattern, stable name pattern)
_NAME_MAP = (
    (r"tok_embed\.weight", "embed.weight"),
    (r"pos\.weight", "pos_embed.weight"),
    (r"layers\.(\d+)\.ln1\.(weight|bias)", r"blocks.\1.ln1.\2"),
    (r"layers\.(\d+)\.ln2\.(weight|bias)", r"blocks.\1.ln2.\2"),
    (r"layers\.(\d+)\.attn\.([qkvo])\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
    (r"layers\.(\d+)\.mlp\.(\w+)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"ln_out\.(weight|bias)", r"ln_final.\1"),
    (r"head\.(weight|bias)", r"unembed.\1"),
)

TOY_CONFIG: dict[str, Any] = {
    "d_model": 128,
    "d_head": 32,
    "n_heads": 4,
    "n_layers": 3,
    "n_ctx": 64,
    "attn_only": True,
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
}

# toy-ioi-large: GPT-2's layout (pre-LN, learned positions, GELU MLPs) at 4 layers x 8 heads
TOY_LARGE_CONFIG: dict[str, Any] = {
    "d_model": 128,
    "d_head": 16,
    "n_heads": 8,
    "n_layers": 4,
    "n_ctx": 64,
    "d_mlp": 256,
    "act_fn": "gelu",
    "attn_only": False,
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
}

# toy-gt: Greater-Than needs MLPs (they turn the start year into "greater" logits)
TOY_GT_CONFIG: dict[str, Any] = {
    "d_model": 64,
    "d_head": 16,
    "n_heads": 4,
    "n_layers": 2,
    "n_ctx": 64,
    "d_mlp": 256,
    "act_fn": "gelu",
    "attn_only": False,
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
}


def _native_name(bridge_name: str) -> str:
    return bridge_name.replace("._original_component", "")


def to_stable(name: str) -> str:
    native = _native_name(name)
    for pattern, stable in _NAME_MAP:
        if re.fullmatch(pattern, native):
            return re.sub(pattern, stable, native)
    raise KeyError(f"no stable name for parameter {name!r}")


_BOOTED: dict[str, Any] = {}  # per process: one booted bridge per (config, seed), never handed out


def build_native(config: dict[str, Any], seed: int = 0):
    """A randomly initialised TransformerLens-native model (TransformerBridge), offline.

    Booting a bridge scans and wires every hook point (about 0.08 s for a toy, and a study
    loads some sixty checkpoints per seed); a copy of a booted one is the same model in a
    third of the time, so each (config, seed) is booted once per process and copied."""
    key = json.dumps([config, seed], sort_keys=True, default=str)
    if key not in _BOOTED:
        _BOOTED[key] = _boot_native(config, seed)
    return copy.deepcopy(_BOOTED[key])


def _boot_native(config: dict[str, Any], seed: int):
    import transformer_lens.model_bridge.sources.native  # noqa: F401  (registers boot_native)
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(**copy.deepcopy(config), seed=seed)  # the caller's dict stays theirs
    return TransformerBridge.boot_native(cfg)


def stable_state_dict(bridge) -> dict[str, torch.Tensor]:
    """Parameters under stable names (named_parameters, so aliased views appear once)."""
    return {
        to_stable(k): v.detach().clone().contiguous() for k, v in bridge.original_model.named_parameters()
    }


def load_stable_state_dict(bridge, state: dict[str, torch.Tensor]) -> None:
    params = {to_stable(k): p for k, p in bridge.original_model.named_parameters()}
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"weights do not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
    with torch.no_grad():
        for name, param in params.items():
            if param.shape != state[name].shape:
                raise ValueError(
                    f"{name}: shape {tuple(state[name].shape)} on disk, {tuple(param.shape)} in the model"
                )
            param.copy_(state[name])
