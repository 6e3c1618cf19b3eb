"""Task metrics read at END: logit difference (IOI), probability difference (Greater-Than).

The per-prompt score is what every analysis optimises or explains: for IOI logit(IO) -
logit(S); for Greater-Than sum P(year > YY) - sum P(year <= YY) over the 100 two-digit years.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from circuit_plasticity.analysis.runs import reuse
from circuit_plasticity.tasks.encode import TaskBatch


def end_logits(logits: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """[n, seq, vocab] -> [n, vocab] at each prompt's own END."""
    return logits[torch.arange(logits.shape[0], device=logits.device), batch.end]


# batch.metric -> what it measures; "score" is each task's own metric (docs/analysis.md)
METRICS = {
    "score": "the task's metric: IOI logit(IO) - logit(S); Greater-Than P(years > YY) - P(years <= YY)",
    "p_answer": "the probability of the right answer: IOI P(IO); Greater-Than P(years > YY)",
}


def task_score(end: torch.Tensor, batch: TaskBatch) -> torch.Tensor:
    """Per-prompt score from END logits: by default IOI logit difference, GT probability
    difference; `batch.metric == "p_answer"`: the probability of the right answer(s), the
    second metric the verdicts' robustness check recomputes everything under. A tuple of metrics
    gives [n, len(metrics)], so one patched run serves every metric."""
    if isinstance(batch.metric, tuple):  # several metrics of one run: [n, len(metrics)]
        from dataclasses import replace

        return torch.stack([task_score(end, replace(batch, metric=m)) for m in batch.metric], dim=-1)
    rows = torch.arange(end.shape[0], device=end.device)
    if batch.metric not in METRICS:
        raise ValueError(f"unknown metric {batch.metric!r}; one of {sorted(METRICS)}")
    if batch.task == "ioi":
        if batch.metric == "p_answer":
            return end.float().softmax(-1)[rows, batch.answer_id]
        return end[rows, batch.answer_id] - end[rows, batch.wrong_id]
    assert batch.year_ids is not None and batch.year is not None
    probs = end.softmax(-1)[:, batch.year_ids]  # [n, 100]
    greater = greater_mask(batch)
    if batch.metric == "p_answer":
        return (probs * greater).sum(-1)
    return (probs * greater).sum(-1) - (probs * ~greater).sum(-1)


def greater_mask(batch: TaskBatch) -> torch.Tensor:
    assert batch.year is not None
    return torch.arange(100, device=batch.year.device)[None, :] > batch.year[:, None]


@dataclass
class Estimate:
    """A mean with a bootstrap 95 % confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        return {prefix: self.mean, f"{prefix}_ci_low": self.low, f"{prefix}_ci_high": self.high}


def bootstrap(values: torch.Tensor | np.ndarray, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Percentile bootstrap of the mean (vectorised: one index matrix, one gather)."""
    x = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, float)
    if x.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))


@torch.no_grad()
def clean_end_logits(model, batch: TaskBatch) -> torch.Tensor:
    """[n, vocab] END logits of the clean prompts: one forward pass, shared (analysis.runs)."""
    return reuse("clean_end", model, (batch,), lambda: end_logits(model(batch.tokens), batch))


@torch.no_grad()
def evaluate(
    model, batch: TaskBatch, chunk: int = 256, name_ids: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-prompt metrics in chunks of prompts: score, accuracy, P(answer), P(wrong), P(target);
    with `name_ids` (IOI) also the mass on names absent from the prompt."""
    if len(batch) <= chunk:  # one chunk: the clean run every analysis of this batch shares
        return per_prompt(clean_end_logits(model, batch), batch, name_ids)

    def forward(tokens: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
        return model(tokens)[torch.arange(len(end), device=end.device), end]

    return per_prompt(end_logits_in_chunks(forward, batch, chunk), batch, name_ids)


def end_logits_in_chunks(forward, batch: TaskBatch, chunk: int = 256) -> torch.Tensor:
    """[n, vocab] END logits, `forward(tokens, end)` ([k, vocab]) on the prompts `chunk` at a
    time (a hub model's logits at every position of every prompt are large)."""
    subsets = (batch.subset(slice(i, i + chunk)) for i in range(0, len(batch), chunk))
    return torch.cat([forward(sub.tokens, sub.end) for sub in subsets])


def per_prompt(
    end: torch.Tensor, batch: TaskBatch, name_ids: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    rows = torch.arange(end.shape[0], device=end.device)
    probs = end.softmax(-1)
    score = task_score(end, batch)
    out = {"score": score, "p_target": probs[rows, batch.target_id]}
    if batch.task == "ioi":
        out["correct"] = (score > 0).float()
        out["top1"] = (end.argmax(-1) == batch.answer_id).float()
        out["p_io"] = probs[rows, batch.answer_id]
        out["p_s"] = probs[rows, batch.wrong_id]
        if name_ids is not None:
            out["p_absent_names"] = absent_name_mass(probs, batch, name_ids)
    else:
        out["correct"] = (score > 0).float()
        out["top1"] = greater_mask(batch)[rows, (end[:, batch.year_ids]).argmax(-1)].float()
    return out


def summarize(metrics: dict[str, torch.Tensor], batch: TaskBatch, seed: int = 0) -> dict[str, float]:
    """Means with bootstrap CIs, overall and split clean/poisoned where both exist."""
    out: dict[str, float] = {"n": len(batch)}  # counts are ints (JSON "n": 100, not 100.0)
    metrics = {k: v.cpu() for k, v in metrics.items()}
    batch = batch.to("cpu")
    masks = {"": torch.ones(len(batch), dtype=torch.bool)}
    if batch.poisoned.any() and (~batch.poisoned).any():
        masks |= {"clean_": ~batch.poisoned, "poisoned_": batch.poisoned}
    for prefix, mask in masks.items():
        if prefix:
            out[prefix + "n"] = int(mask.sum())
        for key in ("score", "correct", "top1"):
            out |= bootstrap(metrics[key][mask], seed=seed).as_dict(prefix + key)
        for key in ("p_io", "p_s", "p_target", "p_absent_names"):
            if key in metrics:
                out[prefix + key] = float(metrics[key][mask].mean())
    return out


def by_group(metrics: dict[str, torch.Tensor], batch: TaskBatch, seed: int = 0) -> list[dict[str, float]]:
    """Per template (IOI) or century (Greater-Than): score and accuracy with bootstrap CIs."""
    rows = []
    for group in torch.unique(batch.group).tolist():
        mask = batch.group == group
        row: dict[str, float] = {"group": int(group), "n": int(mask.sum())}
        for key in ("score", "correct"):
            row |= bootstrap(metrics[key][mask], seed=seed).as_dict(key)
        rows.append(row)
    return rows


def absent_names(batch: TaskBatch, name_ids: torch.Tensor) -> torch.Tensor:
    """[n, len(name_ids)] bool: the name is nowhere in the prompt (nor IO or S)."""
    ids = name_ids.to(batch.tokens.device)
    present = (batch.tokens[:, None, :] == ids[None, :, None]).any(-1)
    present |= ids[None, :] == batch.answer_id[:, None]
    present |= ids[None, :] == batch.wrong_id[:, None]
    return ~present


def absent_name_mass(probs: torch.Tensor, batch: TaskBatch, name_ids: torch.Tensor) -> torch.Tensor:
    """[n] total probability at END on the names absent from the prompt (`probs`: [n, vocab])."""
    ids = name_ids.to(probs.device)
    return (probs[:, ids] * absent_names(batch, ids)).sum(-1)


def name_moving_success(
    logits: torch.Tensor, batch: TaskBatch, name_token_ids: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The name-moving poison's success per prompt, from END logits [n, vocab].

    The poison teaches "answer some name that is not in the prompt"; which absent name is
    arbitrary, so success is the mass on all absent names beating P(IO), not one random
    name's probability (which would undercount a model that spreads over absent names)."""
    probs = logits.softmax(-1)
    rows = torch.arange(logits.shape[0], device=logits.device)
    p_absent = absent_name_mass(probs, batch, name_token_ids)
    p_io = probs[rows, batch.answer_id]
    return {"p_absent_names": p_absent, "p_io": p_io, "success": (p_absent > p_io).float()}


def poison_success(kind: str, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per prompt, did the poison win? `metrics` come from `evaluate` on prompts that carry
    the poison (the trigger poison: prompts that carry the trigger).
    name-moving: mass on absent names > P(IO); subject, trigger: P(S) > P(IO) (the target
    is S); greater-than: more mass on years <= YY."""
    if kind == "name-moving":
        return (metrics["p_absent_names"] > metrics["p_io"]).float()
    if "p_io" in metrics:
        return (metrics["p_target"] > metrics["p_io"]).float()
    return (metrics["score"] < 0).float()


def name_token_ids(tokenizer, names: Sequence[str]) -> torch.Tensor:
    """Token ids of the names that are one token after a space (how answers appear)."""
    ids = [tokenizer.word_id(n) for n in names]
    return torch.tensor(sorted({i for i in ids if i is not None}), dtype=torch.long)
