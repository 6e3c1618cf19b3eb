"""Tokenizers by name: the embedded toys', a tokenizer.json, a model directory, a hub name.

Here, not in tasks/: resolving a name needs the model registry (the toys) and the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circuit_plasticity.tasks.tokenizer import TextTokenizer


def load_tokenizer(spec: str) -> TextTokenizer:
    """A tokenizer from 'toy-ioi' / 'toy-gt', a tokenizer.json, a model directory, or a hub name."""
    from tokenizers import Tokenizer

    from circuit_plasticity.models.toy import TOY_DIRS

    if spec in TOY_DIRS:
        return TextTokenizer.wrap(Tokenizer.from_file(str(TOY_DIRS[spec] / "tokenizer.json")), spec)
    path = Path(spec)
    if path.is_file():
        return TextTokenizer.wrap(Tokenizer.from_file(str(path)), spec)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return TextTokenizer.wrap(Tokenizer.from_file(str(path / "tokenizer.json")), spec)
        return _hub_tokenizer(str(path))
    return _hub_tokenizer(spec)


def _hub_tokenizer(name: str) -> TextTokenizer:
    from circuit_plasticity.models.hub import hub_load

    def load(local_only: bool) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, use_fast=True, local_files_only=local_only)

    return TextTokenizer.wrap(hub_load(name, load, what="tokenizer"), name)
