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
TOY_LARGE_NAME = "toy-ioi-large"  # the larger embedded IOI model (32 heads, MLPs)
TOY_NAMES = (TOY_NAME, TOY_GT_NAME, TOY_LARGE_NAME)


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


def load_model(spec: str, device: str | None = None, tokenizer: str | None = None) -> LoadedModel:
    """Any model as a TransformerBridge on `device` (default: `default_device()`).

    `spec`: an embedded toy, a folder (ours, a Hugging Face one, a PEFT adapter folder, a
    Trainer checkpoint; `DIR@last` / `DIR@N` for a Trainer output folder) or a hub name.
    `tokenizer` (else the command's --tokenizer, `layouts.fallback_tokenizer`) serves folders
    that hold no tokenizer files."""
    from circuit_plasticity.models.layouts import resolve

    device = device or default_device()
    spec = str(spec)
    if spec in TOY_NAMES:
        from circuit_plasticity.models.toy import TOY_DIRS

        where = TOY_DIRS[spec]
        if not (where / WEIGHTS).is_file():
            raise UserError(
                f"the embedded model {spec} is missing from {where}; rebuild it with "
                f"`circuit-plasticity toy-model train --model {spec} --out <dir>`"
            )
        return _load_dir(where, device, name=spec)
    spec = resolve(spec)
    path = Path(spec)
    if path.is_dir():
        return _load_dir(path, device, name=spec, tokenizer=tokenizer)
    if path.exists():
        raise UserError(f"{spec} is a file; a model is a directory (with config.json) or a name")
    if _looks_local(spec):
        raise UserError(f"{spec} does not exist (no such model folder)")
    try:
        return _load_hub(spec, device, tokenizer=tokenizer)
    except UserError as why:
        if "/" not in spec:
            raise
        raise UserError(f"{spec} does not exist as a local folder; as a hub name: {why}") from None


def _looks_local(spec: str) -> bool:
    """A path, not a hub name ('gpt2', 'org/name'): ./x, /x, ~/x, x/, a/b/c, or a/b where a exists."""
    if spec.startswith((".", "/", "~")) or spec.endswith(("/", ".safetensors")) or "\\" in spec:
        return True
    parts = spec.split("/")
    return len(parts) > 2 or (len(parts) == 2 and Path(parts[0]).exists())


def _load_dir(path: Path, device: str | None, name: str, tokenizer: str | None = None) -> LoadedModel:
    from circuit_plasticity.models.layouts import ADAPTER

    if (path / ADAPTER).is_file():
        return _load_adapter(path, device, name, tokenizer)
    if not (path / "config.json").is_file():
        raise UserError(
            f"{path} has no config.json: not a model directory (a model folder holds config.json "
            "and its weights; a PEFT adapter folder adapter_config.json)"
        )
    config = read_config(path)
    fmt = config.get("format")
    if fmt == NATIVE_FORMAT:
        return _load_native(path, config, device, name, tokenizer)
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
        return _load_hub(str(path), device, tokenizer=tokenizer)
    raise UserError(f"{path}/config.json is neither a circuit-plasticity nor a Hugging Face config")


def _tokenizer_for(path: Path, tokenizer: str | None) -> str | None:
    """The tokenizer a folder loads with: its own files, else `tokenizer` or the command's
    --tokenizer, else a UserError that says so."""
    from circuit_plasticity.models.layouts import TOKENIZER_FILES, current_fallback, has_tokenizer

    if has_tokenizer(path):
        return tokenizer
    chosen = tokenizer or current_fallback()
    if chosen is None:
        raise UserError(
            f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}; a Trainer saves them only "
            "when given the tokenizer): pass --tokenizer with the base model's name or folder"
        )
    return chosen


def _load_adapter(path: Path, device: str | None, name: str, tokenizer: str | None) -> LoadedModel:
    """A PEFT adapter folder: its base loaded, the adapter applied and merged into the weights
    (the analyses read the merged model)."""
    from circuit_plasticity.models.layouts import adapter_base, has_tokenizer

    try:
        from peft import PeftModel
    except ImportError:
        raise UserError(
            f"{path} is a PEFT adapter folder; loading it needs peft: pip install 'circuit-plasticity[peft]'"
        ) from None
    base = adapter_base(path)
    base_dir = Path(base)
    if (base_dir / "config.json").is_file() and read_config(base_dir).get("format") in (
        NATIVE_FORMAT,
        HUB_FORMAT,
    ):
        raise UserError(
            f"{path}: an adapter of {base}, a circuit-plasticity folder; train adapters on a "
            f"Hugging Face folder (`circuit-plasticity export {base} --out DIR`)"
        )
    if not Path(base).exists() and _looks_local(base):
        raise UserError(f"{path}: its base model {base} does not exist")
    own_tokenizer = str(path) if has_tokenizer(path) else None

    def merge(hf_model):
        return PeftModel.from_pretrained(hf_model, str(path)).merge_and_unload()

    loaded = _load_hub(base, device, tokenizer=tokenizer or own_tokenizer, transform=merge)
    loaded.name = name
    return loaded


def _is_tied(param_name: str) -> bool:
    return "lm_head" in param_name or "embed_out" in param_name


def _load_native(
    path: Path, config: dict[str, Any], device: str | None, name: str, tokenizer: str | None = None
) -> LoadedModel:
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
    chosen = _tokenizer_for(path, tokenizer)
    if (path / "tokenizer.json").is_file():
        tok = TextTokenizer.wrap(Tokenizer.from_file(str(path / "tokenizer.json")), name)
    else:
        from circuit_plasticity.models.tokenizers import load_tokenizer

        tok = load_tokenizer(chosen)
    return LoadedModel(model, tok, name, "native", config["model"])


def _load_hub(
    name: str,
    device: str | None,
    local_dir: str | None = None,
    tokenizer: str | None = None,
    transform=None,
) -> LoadedModel:
    """A Hugging Face model (hub name or folder) booted as a bridge; `tokenizer` another
    tokenizer's name or folder; `transform` applied to the transformers model first (PEFT)."""
    from circuit_plasticity.models.hub import hub_load
    from circuit_plasticity.models.kinds import check_causal_decoder

    def load(local_only: bool) -> tuple[Any, Any, Any]:
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # no "Loading weights" bar per model: ours say it

        config = AutoConfig.from_pretrained(name, local_files_only=local_only)
        check_causal_decoder(name, config)  # before the weights: refuse early, by architecture
        chosen = tokenizer or (_tokenizer_for(Path(name), None) if Path(name).is_dir() else None)
        tok = hf_tokenizer(chosen or name, local_only)
        hf = AutoModelForCausalLM.from_pretrained(
            name, local_files_only=local_only, attn_implementation="eager"
        )
        if transform is not None:
            hf = transform(hf)
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


def hf_tokenizer(spec: str, local_only: bool = True) -> Any:
    """A transformers fast tokenizer from a hub name, a folder, an embedded toy's name or a
    tokenizer.json (the toys' tokenizers are plain tokenizer.json files)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from circuit_plasticity.models.layouts import has_tokenizer

    path = Path(spec)
    if spec in TOY_NAMES or path.is_file() or (path.is_dir() and not has_tokenizer(path)):
        from circuit_plasticity.models.tokenizers import load_tokenizer
        from circuit_plasticity.tasks.tokenizer import BOS_CANDIDATES, PAD_CANDIDATES

        backend = load_tokenizer(spec).backend
        vocab = backend.get_vocab()
        special = {
            "bos_token": next((t for t in BOS_CANDIDATES if t in vocab), None),
            "pad_token": next((t for t in PAD_CANDIDATES if t in vocab), None),
            "unk_token": "<unk>" if "<unk>" in vocab else None,
        }
        fast = PreTrainedTokenizerFast(tokenizer_object=backend, **{k: v for k, v in special.items() if v})
        return _as_saved(fast, backend.to_str())
    bare = (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file()
    if path.is_dir() and bare:
        return hf_tokenizer(str(path / "tokenizer.json"))
    return AutoTokenizer.from_pretrained(spec, use_fast=True, local_files_only=local_only)


def _as_saved(fast: Any, content: str) -> Any:
    """`fast` as loaded back from a folder (TransformerLens reloads a tokenizer by its
    `name_or_path`): written once per content under the temporary directory."""
    import hashlib
    import tempfile

    from transformers import AutoTokenizer

    where = (
        Path(tempfile.gettempdir())
        / "circuit-plasticity-tokenizers"
        / hashlib.sha256(content.encode()).hexdigest()[:16]
    )
    if not (where / "tokenizer_config.json").is_file():  # written aside, then renamed: atomic
        where.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=where.parent))
        fast.save_pretrained(tmp)
        try:
            tmp.rename(where)
        except OSError:  # another process wrote it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return AutoTokenizer.from_pretrained(str(where), use_fast=True)


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
