"""On-disk model directories: safetensors weights + JSON config + tokenizer.json.

A native directory (the toy, and fine-tunes of it) holds `model.safetensors` under stable
names, `config.json` with `"format": "circuit-plasticity-native"` and the architecture, and
`tokenizer.json`. Checkpoints of hub models store the HF model's own parameter names and name
their base model in `config.json`, so they load onto that base.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from circuit_plasticity.fileio import atomic_path, write_json

NATIVE_FORMAT = "circuit-plasticity-native"
HUB_FORMAT = "circuit-plasticity-hub-weights"
WEIGHTS = "model.safetensors"


def save_weights(
    path: str | os.PathLike[str], tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged or foreign file is a UserError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError) as why:
        from circuit_plasticity.errors import UserError

        raise UserError(
            f"{path} is not a readable safetensors file ({str(why).splitlines()[0][:120]}): it is damaged "
            "or of another format; restore it, or delete its directory and rerun to recompute it"
        ) from None


def save_model_dir(
    out: str | os.PathLike[str], model, tokenizer_backend: Any, config: dict[str, Any], source: dict[str, Any]
) -> None:
    """Write a loadable model directory; `source` says native (config) or hub (base name)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if source.get("format") == NATIVE_FORMAT:
        from circuit_plasticity.models.native import stable_state_dict

        tensors = stable_state_dict(model)
    else:
        tensors = {k: v.detach().clone() for k, v in model.original_model.state_dict().items()}
        tensors = _dedupe_shared(tensors)
    save_weights(out / WEIGHTS, tensors)
    with atomic_path(out / "tokenizer.json") as tmp:
        tokenizer_backend.save(str(tmp))
    write_json(out / "config.json", {**source, "model": config})


def _dedupe_shared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses shared storage (tied embeddings): keep the first name of each."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in tensors.items():
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen[key] = name
        out[name] = t.clone()
    return out


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(directory) / "config.json").read_text())
