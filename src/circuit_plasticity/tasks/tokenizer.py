"""One tokenizer interface over every model's tokenizer.

Everything is reduced to a Hugging Face `tokenizers.Tokenizer` (the toy model ships one, and
every fast `transformers` tokenizer wraps one), so the task code treats a word-level toy
vocabulary, GPT-2's byte-level BPE and Pythia's BPE the same way: token positions come from
character offsets, never from assumptions about how words split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from circuit_plasticity.errors import UserError

BOS_CANDIDATES = ("<|endoftext|>", "<bos>", "<s>", "[BOS]")
PAD_CANDIDATES = ("<pad>", "[PAD]", "<|padding|>")


@dataclass
class TextTokenizer:
    """A `tokenizers.Tokenizer` plus the two special ids the tasks need."""

    backend: Any  # tokenizers.Tokenizer
    bos_id: int | None
    pad_id: int
    name: str = "tokenizer"

    @classmethod
    def wrap(cls, backend: Any, name: str = "tokenizer") -> TextTokenizer:
        if hasattr(backend, "backend_tokenizer"):  # a transformers fast tokenizer
            backend = backend.backend_tokenizer
        if not hasattr(backend, "encode") or not hasattr(backend, "token_to_id"):
            raise UserError(
                f"{name}: not a fast tokenizer. Use a `tokenizers.Tokenizer` or a transformers "
                "tokenizer with use_fast=True."
            )
        bos = next((i for t in BOS_CANDIDATES if (i := backend.token_to_id(t)) is not None), None)
        pad = next((i for t in PAD_CANDIDATES if (i := backend.token_to_id(t)) is not None), None)
        return cls(backend=backend, bos_id=bos, pad_id=pad if pad is not None else (bos or 0), name=name)

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size())

    def encode(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and character offsets, without special tokens."""
        enc = self.backend.encode(text, add_special_tokens=False)
        return list(enc.ids), [tuple(o) for o in enc.offsets]

    def word_id(self, word: str) -> int | None:
        """Id of `word` as one token after a space (how names and answers appear), else None."""
        ids, _ = self.encode(" " + word)
        if len(ids) != 1:
            return None
        unk = getattr(getattr(self.backend, "model", None), "unk_token", None)
        if unk is not None and self.backend.token_to_id(unk) == ids[0]:
            return None
        return ids[0]

    def piece_id(self, piece: str) -> int | None:
        """Id of `piece` as one token with no leading space (the second half of '1732')."""
        ids, _ = self.encode(piece)
        return ids[0] if len(ids) == 1 else None

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids))


def single_token_words(tok: TextTokenizer, words: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split `words` into those that are one token after a space and those that are not."""
    kept, dropped = [], []
    for w in words:
        (kept if tok.word_id(w) is not None else dropped).append(w)
    return kept, dropped


def token_index_at(offsets: Sequence[tuple[int, int]], char: int) -> int:
    """Index of the token whose character span holds `char`."""
    for i, (start, end) in enumerate(offsets):
        if start <= char < end:
            return i
    raise ValueError(f"no token covers character {char}")
