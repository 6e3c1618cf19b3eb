"""Evaluate a model on a task: accuracy, mean score with bootstrap CIs, clean/poisoned split."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from circuit_plasticity.analysis.metrics import evaluate, name_token_ids, summarize
from circuit_plasticity.models.load import LoadedModel
from circuit_plasticity.tasks.build import build_dataset
from circuit_plasticity.tasks.encode import TaskBatch, encode_examples
from circuit_plasticity.tasks.jsonl import load_jsonl
from circuit_plasticity.tasks.words import NAMES


def task_batch(
    loaded: LoadedModel,
    task: str,
    n: int = 500,
    seed: int = 0,
    split: str = "test",
    data: str | Path | None = None,
    years: list[int] | None = None,
) -> TaskBatch:
    """Held-out prompts for this model's tokenizer (Greater-Than: start years in `years`), or
    the prompts of a JSONL file."""
    if data is not None:
        examples = load_jsonl(data)
    else:
        examples, _ = build_dataset(task, n, seed=seed, tokenizer=loaded.tokenizer, split=split, years=years)
    batch = encode_examples(examples, loaded.tokenizer, prepend_bos=loaded.tokenizer.bos_id is not None)
    return batch.to(loaded.device)


def evaluate_model(loaded: LoadedModel, batch: TaskBatch, seed: int = 0) -> dict[str, Any]:
    """Summary metrics; IOI adds `p_absent_names` (mass on names absent from the prompt), the
    name-moving poison's own measure, split clean/poisoned like the rest."""
    names = name_token_ids(loaded.tokenizer, NAMES).to(batch.device) if batch.task == "ioi" else None
    stats = summarize(evaluate(loaded.model, batch, name_ids=names), batch, seed=seed)
    return {"model": loaded.name, "task": batch.task, **stats}
