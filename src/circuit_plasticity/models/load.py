"""One loading API for every model the tool fine-tunes and analyses.

`load_model(spec)` takes 'toy-ioi' or 'toy-gt' (the embedded models), a directory written by this tool
(the toy, a fine-tune, a checkpoint), a local Hugging Face model directory, or a hub name
(gpt2, EleutherAI/pythia-160m, ...; from the local cache, or the hub when reachable). Every
model comes back as a TransformerLens `TransformerBridge` plus its tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.fileio import portable_path
from circuit_plasticity.models.store import (
    HUB_FORMAT,
    NATIVE_FORMAT,
    WEIGHTS,
    load_weights,
    read_config,
    save_model_dir,
)
from circuit_plasticity.tasks.tokenizer import TextTokenizer

TOY_NAME = "toy-ioi"
TOY_GT_NAME = "toy-gt"  # the embedded Greater-Than model (with MLPs)
TOY_NAMES = (TOY_NAME, TOY_GT_NAME)


@dataclass
class LoadedModel:
    model: Any  # transformer_lens TransformerBridge
    tokenizer: TextTokenizer
    name: str
    kind: str  # "native" or "hub"
    config: dict[str, Any] = field(default_factory=dict)
    base: str | None = None  # hub models: the name their weights load onto

    @property
    def device(self):
        return next(self.model.parameters()).device

    def save(self, out: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Write a directory that `load_model` reads back (weights as safetensors)."""
        name = portable_path(self.name, out)  # provenance; relative inside a study directory
        if self.kind == "native":
            source = {"format": NATIVE_FORMAT, "name": name}
        else:
            source = {"format": HUB_FORMAT, "name": name, "base": self.base}
        save_model_dir(out, self.model, self.tokenizer.backend, self.config, {**source, **(extra or {})})


def default_device() -> str:
    """CIRCUIT_PLASTICITY_DEVICE if set, else cuda when available, else cpu."""
    import os

    chosen = os.environ.get("CIRCUIT_PLASTICITY_DEVICE")
    if chosen:
        return chosen
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(spec: str, device: str | None = None) -> LoadedModel:
    """Any model as a TransformerBridge on `device` (default: `default_device()`)."""
    device = device or default_device()
    if spec in TOY_NAMES:
        from circuit_plasticity.models.toy import TOY_DIRS

        where = TOY_DIRS[spec]
        if not (where / WEIGHTS).is_file():
            raise UserError(
                f"the embedded model {spec} is missing from {where}; rebuild it with "
                f"`circuit-plasticity toy-model train --model {spec} --out <dir>`"
            )
        return _load_dir(where, device, name=spec)
    path = Path(spec)
    if path.is_dir():
        return _load_dir(path, device, name=spec)
    if path.exists():
        raise UserError(f"{spec} is a file; a model is a directory (with config.json) or a name")
    if spec.startswith((".", "/", "~")) or spec.endswith(("/", ".safetensors")):
        raise UserError(f"no model directory at {spec}")
    return _load_hub(spec, device)


def _load_dir(path: Path, device: str | None, name: str) -> LoadedModel:
    if not (path / "config.json").is_file():
        raise UserError(f"{path} has no config.json: not a model directory")
    config = read_config(path)
    fmt = config.get("format")
    if fmt == NATIVE_FORMAT:
        return _load_native(path, config, device, name)
    if fmt == HUB_FORMAT:
        loaded = _load_hub(config["base"], device, local_dir=None)
        state = load_weights(path / WEIGHTS)
        missing, unexpected = loaded.model.original_model.load_state_dict(state, strict=False)
        if unexpected or any(not _is_tied(m) for m in missing):
            raise UserError(
                f"{path}: weights do not fit {config['base']} "
                f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
            )
        loaded.name = name
        return loaded
    if "model_type" in config:  # a Hugging Face model directory
        return _load_hub(str(path), device)
    raise UserError(f"{path}/config.json is neither a circuit-plasticity nor a Hugging Face config")


def _is_tied(param_name: str) -> bool:
    return "lm_head" in param_name or "embed_out" in param_name


def _load_native(path: Path, config: dict[str, Any], device: str | None, name: str) -> LoadedModel:
    from tokenizers import Tokenizer

    from circuit_plasticity.models.native import build_native, load_stable_state_dict

    model = build_native(config["model"])
    try:
        load_stable_state_dict(model, load_weights(path / WEIGHTS))
    except (ValueError, FileNotFoundError) as error:
        raise UserError(f"{path}: {error}") from error
    if device and next(model.parameters()).device != torch.device(device):
        model = model.to(device)
    model.eval()
    tok = TextTokenizer.wrap(Tokenizer.from_file(str(path / "tokenizer.json")), name)
    return LoadedModel(model, tok, name, "native", config["model"])


def _load_hub(name: str, device: str | None, local_dir: str | None = None) -> LoadedModel:
    from circuit_plasticity.models.hub import hub_load
    from circuit_plasticity.models.kinds import check_causal_decoder

    def load(local_only: bool) -> tuple[Any, Any, Any]:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar per model: ours say it

        config = AutoConfig.from_pretrained(name, local_files_only=local_only)
        check_causal_decoder(name, config)  # before the weights: refuse early, by architecture
        tok = AutoTokenizer.from_pretrained(name, use_fast=True, local_files_only=local_only)
        hf = AutoModelForCausalLM.from_pretrained(
            name, local_files_only=local_only, attn_implementation="eager"
        )
        return config, hf, tok

    if Path(name).is_dir():  # a local directory: its own error, never "not in the cache"
        config, hf_model, hf_tok = _load_local(name, load)
    else:
        config, hf_model, hf_tok = hub_load(name, load, what="model")
    bridge = boot_bridge(name, config, hf_model, hf_tok, device)
    bridge.eval()
    return LoadedModel(
        bridge,
        TextTokenizer.wrap(hf_tok, name),
        name,
        "hub",
        {"n_layers": bridge.cfg.n_layers, "n_heads": bridge.cfg.n_heads},
        base=name,
    )


def _load_local(name: str, load) -> tuple[Any, Any, Any]:
    try:
        return load(True)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - transformers raises many types for bad directories
        raise UserError(
            f"{name}: transformers cannot load this model directory ({_first_line(error)})"
        ) from error


def boot_bridge(name: str, config: Any, hf_model: Any, hf_tok: Any, device: str | None) -> Any:
    """The TransformerBridge, or a UserError naming the architecture TransformerLens lacks."""
    from importlib.metadata import version

    from transformer_lens.model_bridge import TransformerBridge

    from circuit_plasticity.models.kinds import SUPPORTED, describe

    try:
        return TransformerBridge.boot_transformers(name, hf_model=hf_model, tokenizer=hf_tok, device=device)
    except Exception as error:  # noqa: BLE001 - any boot failure means: this architecture is not supported
        raise UserError(
            f"{name}: TransformerLens {version('transformer-lens')} cannot load {describe(config)} "
            f"({_first_line(error)}); circuit-plasticity studies {SUPPORTED}"
        ) from error


def _first_line(error: Exception, limit: int = 160) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = text.split(" Available architectures")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
