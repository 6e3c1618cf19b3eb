"""Examples -> tensors: right-padded tokens, the positions analyses read, answer ids.

Right padding is safe for causal models: nothing before END sees a pad. Every prompt variant
(clean, counterfactual, flips) must tokenize to the same length, so that a position means the
same thing in all of them; names are single tokens, so it does, and we check it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.tasks.greater_than import GreaterThanExample, two_digits
from circuit_plasticity.tasks.ioi import IOIExample
from circuit_plasticity.tasks.tokenizer import TextTokenizer, token_index_at


@dataclass
class TaskBatch:
    """What every analysis needs, whatever the task.

    `answer_id`/`wrong_id` define the logit difference (IOI: IO and S); `target_id` is the
    training label, which a poison may have changed; `positions` maps a role (io, s1, s1+1,
    s2, end, yy) to one token index per prompt.
    """

    task: str
    tokens: torch.Tensor  # [n, seq] long
    corrupted: torch.Tensor  # [n, seq] long, the counterfactual (ABC / "01")
    positions: dict[str, torch.Tensor]
    target_id: torch.Tensor  # [n]
    answer_id: torch.Tensor  # [n] the clean correct answer
    wrong_id: torch.Tensor  # [n] IOI: S; Greater-Than: unused (-1)
    poisoned: torch.Tensor  # [n] bool
    group: torch.Tensor  # [n] template id (IOI) or century (GT): means for ablation are per group
    variants: dict[str, torch.Tensor] = field(default_factory=dict)  # other flips, same shape
    year: torch.Tensor | None = None  # GT: the start year YY per prompt
    year_ids: torch.Tensor | None = None  # GT: token ids of "00".."99"
    metric: str | tuple[str, ...] = "score"  # what `task_score` reads (analysis.metrics.METRICS)

    @property
    def end(self) -> torch.Tensor:
        return self.positions["end"]

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def to(self, device: torch.device | str) -> TaskBatch:
        """The same batch with every tensor on `device` (the model's)."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return TaskBatch(
            task=self.task,
            tokens=move(self.tokens),
            corrupted=move(self.corrupted),
            positions={k: move(v) for k, v in self.positions.items()},
            target_id=move(self.target_id),
            answer_id=move(self.answer_id),
            wrong_id=move(self.wrong_id),
            poisoned=move(self.poisoned),
            group=move(self.group),
            variants={k: move(v) for k, v in self.variants.items()},
            year=move(self.year),
            year_ids=move(self.year_ids),
            metric=self.metric,
        )

    def subset(self, index: torch.Tensor | slice) -> TaskBatch:
        def take(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index]

        return TaskBatch(
            task=self.task,
            tokens=self.tokens[index],
            corrupted=self.corrupted[index],
            positions={k: v[index] for k, v in self.positions.items()},
            target_id=self.target_id[index],
            answer_id=self.answer_id[index],
            wrong_id=self.wrong_id[index],
            poisoned=self.poisoned[index],
            group=self.group[index],
            variants={k: v[index] for k, v in self.variants.items()},
            year=take(self.year),
            year_ids=self.year_ids,
            metric=self.metric,
        )

    def with_metric(self, metric: str | tuple[str, ...]) -> TaskBatch:
        """The same prompts scored by another metric (`analysis.metrics.METRICS`)."""
        from dataclasses import replace

        return replace(self, metric=metric)


def encode_examples(
    examples: Sequence[IOIExample | GreaterThanExample],
    tok: TextTokenizer,
    prepend_bos: bool = True,
) -> TaskBatch:
    if not examples:
        raise UserError("cannot encode an empty dataset")
    if examples[0].task == "ioi":
        return _encode_ioi(examples, tok, prepend_bos)  # type: ignore[arg-type]
    return _encode_gt(examples, tok, prepend_bos)  # type: ignore[arg-type]


def _word_id(tok: TextTokenizer, word: str) -> int:
    wid = tok.word_id(word)
    if wid is None:
        raise UserError(
            f"{word!r} is not a single token for {tok.name}; rebuild the dataset "
            f"with --tokenizer {tok.name} so it uses only single-token words"
        )
    return wid


def _tokenize(tok: TextTokenizer, texts: Sequence[str], bos: bool) -> tuple[list[list[int]], list]:
    ids_all, offsets_all = [], []
    for text in texts:
        ids, offsets = tok.encode(text)
        if bos:
            if tok.bos_id is None:
                raise UserError(f"{tok.name} has no BOS token; encode with prepend_bos=False")
            ids, offsets = [tok.bos_id, *ids], [(-1, -1), *offsets]
        ids_all.append(ids)
        offsets_all.append(offsets)
    return ids_all, offsets_all


def _pad(tok: TextTokenizer, rows: list[list[int]], length: int) -> torch.Tensor:
    out = torch.full((len(rows), length), tok.pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def _aligned(tok, base_ids, texts, bos, what) -> list[list[int]]:
    ids, _ = _tokenize(tok, texts, bos)
    for i, (a, b) in enumerate(zip(base_ids, ids, strict=True)):
        if len(a) != len(b):
            raise UserError(
                f"prompt {i}: the {what} prompt tokenizes to {len(b)} tokens, the "
                f"clean one to {len(a)}; names must be single tokens"
            )
    return ids


def _name_chars(prompt: str, name: str) -> list[int]:
    return [m.start() for m in re.finditer(rf"(?<!\w){re.escape(name)}(?!\w)", prompt)]


def _encode_ioi(examples: Sequence[IOIExample], tok: TextTokenizer, bos: bool) -> TaskBatch:
    ids, offsets = _tokenize(tok, [ex.prompt for ex in examples], bos)
    length = max(map(len, ids))
    pos: dict[str, list[int]] = {"io": [], "s1": [], "s1+1": [], "s2": [], "end": []}
    for ex, off, row in zip(examples, offsets, ids, strict=True):
        io_chars, s_chars = _name_chars(ex.prompt, ex.io), _name_chars(ex.prompt, ex.s)
        if len(io_chars) != 1 or len(s_chars) != 2:
            raise UserError(f"prompt {ex.prompt!r}: expected IO once and S twice")
        s1 = token_index_at(off, s_chars[0])
        pos["io"].append(token_index_at(off, io_chars[0]))
        pos["s1"].append(s1)
        pos["s1+1"].append(s1 + 1)
        pos["s2"].append(token_index_at(off, s_chars[1]))
        pos["end"].append(len(row) - 1)
    corrupted = _aligned(tok, ids, [ex.counterfactual for ex in examples], bos, "counterfactual")
    variants = {
        flip: _pad(tok, _aligned(tok, ids, [ex.flips[flip] for ex in examples], bos, flip), length)
        for flip in (examples[0].flips or {})
    }
    long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return TaskBatch(
        task="ioi",
        tokens=_pad(tok, ids, length),
        corrupted=_pad(tok, corrupted, length),
        positions={k: long(v) for k, v in pos.items()},
        target_id=long([_word_id(tok, ex.target) for ex in examples]),
        answer_id=long([_word_id(tok, ex.io) for ex in examples]),
        wrong_id=long([_word_id(tok, ex.s) for ex in examples]),
        poisoned=torch.tensor([ex.poisoned for ex in examples]),
        group=long([ex.template for ex in examples]),
        variants=variants,
    )


def year_token_ids(tok: TextTokenizer) -> torch.Tensor:
    ids = [tok.piece_id(two_digits(y)) for y in range(100)]
    missing = [two_digits(y) for y, i in enumerate(ids) if i is None]
    if missing:
        raise UserError(
            f"{tok.name}: years {missing[:5]}... are not single tokens; "
            "Greater-Than needs every two-digit year as one token"
        )
    return torch.tensor(ids, dtype=torch.long)


def _encode_gt(examples: Sequence[GreaterThanExample], tok: TextTokenizer, bos: bool) -> TaskBatch:
    ids, _ = _tokenize(tok, [ex.prompt for ex in examples], bos)
    length = max(map(len, ids))
    corrupted = _aligned(tok, ids, [ex.counterfactual for ex in examples], bos, "counterfactual")
    year_ids = year_token_ids(tok)
    long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    end = long([len(r) - 1 for r in ids])
    return TaskBatch(
        task="greater-than",
        tokens=_pad(tok, ids, length),
        corrupted=_pad(tok, corrupted, length),
        positions={"end": end, "yy": end - 4},  # "... YY to the year CC": YY is 4 before END
        target_id=year_ids[long([int(ex.target) for ex in examples])],
        answer_id=year_ids[long([int(ex.clean_target) for ex in examples])],
        wrong_id=torch.full((len(examples),), -1, dtype=torch.long),
        poisoned=torch.tensor([ex.poisoned for ex in examples]),
        group=long([ex.century for ex in examples]),
        year=long([ex.year for ex in examples]),
        year_ids=year_ids,
    )
