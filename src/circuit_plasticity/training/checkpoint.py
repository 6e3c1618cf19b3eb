"""Training checkpoints: a model directory plus the optimizer and RNG state, all safetensors.

A checkpoint is written into a temporary directory and renamed into place, so after a kill
-9 there is either a whole checkpoint or none. Everything needed to continue bit for bit
lives in it: weights, AdamW moments and step counts, the torch RNG state, and the position
(phase, epoch, step) from which the seeded data order is recomputed.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from circuit_plasticity.fileio import file_hashes, hash_problem, unique_suffix
from circuit_plasticity.models.load import LoadedModel
from circuit_plasticity.models.store import load_weights, save_weights

STATE = "train_state.safetensors"
META = "checkpoint.json"


@dataclass
class Position:
    phase: str
    epoch: int  # epochs completed before this point's epoch, 0-based epoch index
    step_in_epoch: int  # steps done within `epoch`
    step: int  # steps done in the phase

    @property
    def name(self) -> str:
        return f"step-{self.step:06d}"


def optimizer_tensors(
    optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter]
) -> dict[str, torch.Tensor]:
    out = {}
    for name, param in named.items():
        state = optimizer.state.get(param)
        if not state:
            continue
        for key, value in state.items():
            out[f"{name}::{key}"] = value.detach().clone() if torch.is_tensor(value) else torch.tensor(value)
    return out


def restore_optimizer(
    optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter], tensors: dict[str, torch.Tensor]
) -> None:
    for key, value in tensors.items():
        if key.startswith(("rng::", "param::")):
            continue
        name, field = key.split("::", 1)
        param = named[name]
        # AdamW keeps `step` on the CPU unless capturable; moments live with the parameter
        target = param.device if field != "step" else value.device
        optimizer.state.setdefault(param, {})[field] = value.clone().to(target)


def save_checkpoint(
    directory: Path,
    loaded: LoadedModel,
    optimizer: torch.optim.Optimizer,
    position: Position,
    metrics: dict[str, Any],
    data_hash: str,
    trainable: dict[str, torch.nn.Parameter] | None = None,
) -> Path:
    """`trainable`: the parameters the optimizer holds when they are not the model's own (LoRA
    factors): their values and moments go into the train state beside the merged weights."""
    final = directory / position.name
    for stale in directory.glob(".step-*.tmp"):  # a killed writer's (the run's lock is ours)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = directory / f".{position.name}.{unique_suffix()}.tmp"  # never shared by two writers
    tmp.mkdir(parents=True)
    loaded.save(tmp)
    named = trainable if trainable is not None else dict(loaded.model.named_parameters())
    state = optimizer_tensors(optimizer, named)
    for name, param in (trainable or {}).items():
        state[f"param::{name}"] = param.detach().clone()
    state["rng::torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        state["rng::cuda"] = torch.cuda.get_rng_state()
    save_weights(tmp / STATE, state)
    meta = {**asdict(position), "data_hash": data_hash, "metrics": metrics, "files": file_hashes(tmp)}
    (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def latest_checkpoint(directory: Path) -> Path | None:
    if not directory.is_dir():
        return None
    done = sorted(p for p in directory.glob("step-*") if (p / META).is_file() and (p / STATE).is_file())
    return done[-1] if done else None


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What is wrong with a written checkpoint, in a few words naming the file (None: whole).
    Checkpoints from before content hashes are only checked for their files being there."""
    try:
        meta = json.loads((checkpoint / META).read_text())
    except (OSError, ValueError):
        return f"{checkpoint / META} is missing or not JSON"
    recorded = meta.get("files") or dict.fromkeys((STATE, "config.json"), "")
    if not meta.get("files"):
        missing = [name for name in recorded if not (checkpoint / name).is_file()]
        if missing:
            return f"{checkpoint / missing[0]} is missing"
        return next(filter(None, map(_safetensors_problem, sorted(checkpoint.glob("*.safetensors")))), None)
    return hash_problem(checkpoint, recorded)


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file whose header or size is wrong (a cut file), in words (None: whole)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            list(handle.keys())
    except Exception as error:  # noqa: BLE001 (any failure to open it is the finding)
        return f"{path} is not a readable safetensors file ({type(error).__name__})"
    return None


def last_good_checkpoint(directory: Path, warn) -> Path | None:
    """The newest whole checkpoint of a phase directory; newer damaged ones are named through
    `warn` (one line each) and removed, so training resumes from the last good one and redoes
    the steps after it (bit for bit: the data order and RNG state are in the checkpoint)."""
    if not directory.is_dir():
        return None
    for checkpoint in sorted(directory.glob("step-*"), reverse=True):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return checkpoint
        warn(f"{problem}; retraining from the last good checkpoint")
        shutil.rmtree(checkpoint)
    return None


def read_position(checkpoint: Path) -> tuple[Position, dict[str, Any]]:
    meta = json.loads((checkpoint / META).read_text())
    position = Position(meta["phase"], meta["epoch"], meta["step_in_epoch"], meta["step"])
    return position, meta


def restore_training_state(
    checkpoint: Path,
    loaded: LoadedModel,
    optimizer: torch.optim.Optimizer,
    trainable: dict[str, torch.nn.Parameter] | None = None,
) -> None:
    tensors = load_weights(checkpoint / STATE)
    named = trainable if trainable is not None else dict(loaded.model.named_parameters())
    with torch.no_grad():
        for name, param in (trainable or {}).items():
            param.copy_(tensors[f"param::{name}"])
    restore_optimizer(optimizer, named, tensors)
    torch.set_rng_state(tensors["rng::torch"])
    if "rng::cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng::cuda"])
