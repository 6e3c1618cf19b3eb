"""Pretrain an embedded toy model from scratch: deterministic for a seed, minutes on 2 cores.

One training loop serves both toys; a `ToyRecipe` says what differs (architecture, corpus mix,
the held-out task watched during training, the name written into the model directory).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.models.native import TOY_CONFIG, TOY_GT_CONFIG, TOY_LARGE_CONFIG, build_native
from circuit_plasticity.models.store import NATIVE_FORMAT, save_model_dir
from circuit_plasticity.models.toy.corpus import (
    GT_KINDS,
    KINDS,
    LARGE_KINDS,
    LARGE_LATE_KINDS,
    documents,
    mix_of,
    vocabulary_texts,
)
from circuit_plasticity.models.toy.tokenizer import word_level_tokenizer
from circuit_plasticity.tasks.tokenizer import TextTokenizer
from circuit_plasticity.training.loop import train_step
from circuit_plasticity.training.loss import pad_batch


@dataclass
class ToyTrainConfig:
    seed: int = 0
    steps: int = 5000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    eval_every: int = 500
    schedule_steps: int | None = None  # the learning-rate schedule's length (None: `steps`)
    # each head's output zeroed with this probability per sequence and step (the rest scaled up):
    # a model that cannot count on any one head may learn backups that take over (self-repair)
    head_dropout: float = 0.0
    head_dropout_from: int = 0  # the first step with head dropout (later: after a circuit forms)


@dataclass(frozen=True)
class ToyRecipe:
    """What makes one embedded toy: its name, architecture, corpus and watched task."""

    name: str
    model: dict[str, Any]
    kinds: tuple
    task: str  # held-out task evaluated every `eval_every` steps
    history_keys: tuple[str, str]  # names of that task's score and accuracy in the history
    steps: int = 5000  # the shipped model's optimizer steps
    # the learning-rate schedule's length, when training stops before its end (None: `steps`)
    schedule_steps: int | None = None
    # a curriculum: from this step on the corpus is `late_kinds` (a fresh seeded stream)
    late_kinds: tuple[int, tuple] | None = None


TOY_IOI = ToyRecipe("toy-ioi", TOY_CONFIG, KINDS, "ioi", ("ioi_logit_diff", "ioi_accuracy"))
TOY_GT = ToyRecipe(
    "toy-gt", TOY_GT_CONFIG, GT_KINDS, "greater-than", ("gt_prob_diff", "gt_accuracy"), steps=2000
)
# stopped at step 1500 of a 2500-step schedule: "partly good" at IOI (accuracy 0.87 on held-out
# prompts; before the curriculum the whole schedule reached 0.96, and schedules of 1200 or 1500
# steps stayed at chance: the long schedule's high middle learning rate forms the circuit). From step
# 1250, once the name movers have formed, repeated sequences rise from 10.5 % to 20 % of the
# corpus: induction heads then form beside the name movers (before it, they take the name
# movers' place; the model card's log, row I)
TOY_IOI_LARGE = ToyRecipe(
    "toy-ioi-large",
    TOY_LARGE_CONFIG,
    LARGE_KINDS,
    "ioi",
    ("ioi_logit_diff", "ioi_accuracy"),
    steps=1500,
    schedule_steps=2500,
    late_kinds=(1250, LARGE_LATE_KINDS),
)
RECIPES = {r.name: r for r in (TOY_IOI, TOY_GT, TOY_IOI_LARGE)}


def recipe_variant(
    recipe: ToyRecipe,
    mix: dict[str, float] | None = None,
    d_mlp: int | None = None,
    mix_from: tuple[int, dict[str, float]] | None = None,
    drop_curriculum: bool = False,
) -> ToyRecipe:
    """`recipe` with another corpus mix ({kind: weight}: models/toy/corpus.py's MAKERS), MLP
    width, or a second mix from a step on (`mix_from`, a curriculum; `drop_curriculum`: none):
    the variants tried on the way to a shipped recipe (the model cards' logs)."""
    changes: dict[str, Any] = {"late_kinds": None} if drop_curriculum else {}
    if mix is not None:
        changes["kinds"] = mix_of(mix)
    if mix_from is not None:
        step, late = mix_from
        if step <= 0:
            raise UserError(f"--mix-from must start after step 0, got step {step}")
        try:
            changes["late_kinds"] = (step, mix_of(late))
        except ValueError as why:
            raise UserError(f"--mix-from: {why}") from None
    if d_mlp is not None:
        if d_mlp <= 0:
            raise UserError(f"--d-mlp must be positive, got {d_mlp}")
        if recipe.model.get("attn_only"):
            raise UserError(f"{recipe.name} has no MLPs: --d-mlp does not apply")
        changes["model"] = {**recipe.model, "d_mlp": d_mlp}
    return replace(recipe, **changes)


def train_config(
    recipe: ToyRecipe,
    seed: int = 0,
    steps: int | None = None,
    schedule_steps: int | None = None,
    head_dropout: float = 0.0,
    head_dropout_from: int = 0,
) -> ToyTrainConfig:
    """The training settings that produced the shipped `recipe` model (steps, the schedule's
    length and head dropout, from which step, overridable)."""
    return ToyTrainConfig(
        seed=seed,
        steps=steps or recipe.steps,
        schedule_steps=schedule_steps or recipe.schedule_steps,
        head_dropout=head_dropout,
        head_dropout_from=head_dropout_from,
    )


def head_dropout_hooks(model, p: float, seed: int, step: int, batch: int) -> list:
    """Forward hooks that zero each head's output (z, so W_O sees nothing of it) with
    probability `p` per sequence, scaling the kept heads by 1 / (1 - p); the masks are a pure
    function of (seed, step), so pretraining stays deterministic."""
    if p <= 0:
        return []
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    keep = (torch.rand(n_layers, batch, 1, n_heads, 1, generator=generator) >= p).float() / (1 - p)

    def hook(layer: int):
        return lambda z, hook: z * keep[layer].to(z)

    return [(f"blocks.{layer}.attn.hook_z", hook(layer)) for layer in range(n_layers)]


def lr_at(step: int, cfg: ToyTrainConfig) -> float:
    """Linear warmup, then cosine decay to a tenth over the schedule's length."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    length = cfg.schedule_steps or cfg.steps
    progress = min(1.0, (step - cfg.warmup) / max(1, length - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def toy_tokenizer(name: str = "toy-ioi") -> TextTokenizer:
    """The word-level vocabulary both toys share."""
    return TextTokenizer.wrap(word_level_tokenizer(vocabulary_texts()), name)


def heldout_batch(tok: TextTokenizer, task: str = "ioi", n: int = 400, seed: int = 12345):
    """Zero-shot prompts of the held-out split (IOI: names and templates; Greater-Than: nouns)
    that fine-tuning never sees."""
    from circuit_plasticity.tasks.build import build_dataset
    from circuit_plasticity.tasks.encode import encode_examples

    examples, _ = build_dataset(task, n, seed=seed, tokenizer=tok, split="test")
    return encode_examples(examples, tok)


def train_toy(
    cfg: ToyTrainConfig,
    out: str | Path | None = None,
    progress: bool = True,
    recipe: ToyRecipe = TOY_IOI,
    save_at: Sequence[int] = (),
) -> dict[str, Any]:
    """Pretrain `recipe` under `cfg`; the model is written to `out`, and also to
    `out`/step-N after each step N of `save_at` (the stages of one run, for the model card)."""
    from tqdm import tqdm

    from circuit_plasticity.analysis.metrics import evaluate, summarize

    torch.manual_seed(cfg.seed)
    tok = toy_tokenizer(recipe.name)
    model_cfg = dict(recipe.model, d_vocab=tok.vocab_size)
    model = build_native(model_cfg, seed=cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    stream = documents(cfg.seed, kinds=recipe.kinds)
    switch, late = recipe.late_kinds or (None, ())
    heldout = heldout_batch(tok, recipe.task)
    score_key, accuracy_key = recipe.history_keys
    history: list[dict[str, float]] = []

    def corpus(steps: int) -> dict[str, Any]:
        """The mix the first `steps` steps drew from (what --mix, --mix-from set)."""
        used: dict[str, Any] = {kind: weight for kind, weight, _ in recipe.kinds}
        if switch is not None and switch < steps:
            used[f"from step {switch}"] = {kind: weight for kind, weight, _ in late}
        return used

    start = time.time()
    bar = tqdm(range(cfg.steps), desc=f"{recipe.name} pretraining", disable=not progress)
    for step in bar:
        if step == switch:
            stream = documents(cfg.seed + 1, kinds=late)
        rows = [
            [tok.bos_id, *tok.encode(next(stream))[0]][: model_cfg["n_ctx"]] for _ in range(cfg.batch_size)
        ]
        tokens, mask = pad_batch(rows, tok.pad_id)
        p = cfg.head_dropout if step >= cfg.head_dropout_from else 0.0
        dropout = head_dropout_hooks(model, p, cfg.seed, step, len(rows))
        with model.hooks(fwd_hooks=dropout) if dropout else contextlib.nullcontext():
            loss = train_step(model, optimizer, tokens, mask, lr_at(step, cfg))
        if loss is None:
            raise UserError(f"{recipe.name} pretraining: the loss became NaN or infinite at step {step + 1}")
        if out is not None and step + 1 in save_at and step + 1 != cfg.steps:
            kept = {"step": step + 1, "corpus": corpus(step + 1)}
            source = {"format": NATIVE_FORMAT, "name": recipe.name, "pretraining": kept}
            save_model_dir(Path(out) / f"step-{step + 1}", model, tok.backend, model_cfg, source)
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            model.eval()
            stats = summarize(evaluate(model, heldout), heldout)
            model.train()
            history.append(
                {
                    "step": step + 1,
                    "loss": float(loss.detach()),
                    score_key: stats["score"],
                    accuracy_key: stats["correct"],
                }
            )
            bar.set_postfix(
                loss=f"{float(loss.detach()):.3f}",
                score=f"{stats['score']:.2f}",
                acc=f"{stats['correct']:.2f}",
            )
    result = {
        "train": asdict(cfg),
        "corpus": corpus(cfg.steps),
        "seconds": time.time() - start,
        "history": history,
    }
    if out is not None:
        save_model_dir(
            out,
            model,
            tok.backend,
            model_cfg,
            {"format": NATIVE_FORMAT, "name": recipe.name, "pretraining": result},
        )
    return {"model": model, "tokenizer": tok, **result}
