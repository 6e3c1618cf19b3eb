"""Run the phases of a protocol into one run directory; resumable after a kill at any moment.

Layout (docs/run-directory.md):
  run_dir/spec.json                      the validated spec
  run_dir/phases/<phase>/step-NNNNNN/    checkpoints (model dir + train_state + checkpoint.json)
  run_dir/phases/<phase>/final.json      written when the phase ends: its final checkpoint
  run_dir/metrics.jsonl                  one row per evaluation, append-only
  run_dir/metrics.parquet                the same rows as a table, rewritten at each phase end
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from circuit_plasticity.errors import UserError
from circuit_plasticity.fileio import portable_path, resolve_path, write_atomic, write_json
from circuit_plasticity.locks import claim_directory, writes_directory
from circuit_plasticity.models.load import LoadedModel, load_model
from circuit_plasticity.spec import same_spec
from circuit_plasticity.training.checkpoint import (
    Position,
    checkpoint_problem,
    last_good_checkpoint,
    latest_checkpoint,
    read_position,
    restore_training_state,
    save_checkpoint,
)
from circuit_plasticity.training.data import TrainTensors, train_tensors
from circuit_plasticity.training.evaluation import Evaluator
from circuit_plasticity.training.loss import next_token_loss
from circuit_plasticity.training.protocol import Phase, TrainSpec


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def lr_at(phase: Phase, step: int, total: int) -> float:
    if step < phase.warmup_steps:
        return phase.lr * (step + 1) / phase.warmup_steps
    if phase.schedule == "constant":
        return phase.lr
    progress = (step - phase.warmup_steps) / max(1, total - phase.warmup_steps)
    if phase.schedule == "linear":
        return phase.lr * (1 - progress)
    return phase.lr * 0.5 * (1 + math.cos(math.pi * progress))


def train_step(model, optimizer, tokens: torch.Tensor, mask: torch.Tensor, lr: float) -> torch.Tensor | None:
    """One optimizer step of next-token loss at learning rate `lr`: the loss, or None (and no
    step taken) when it is not finite. Every training loop (phases, the toys' pretraining)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = next_token_loss(model(tokens), tokens, mask)
    if not torch.isfinite(loss):
        return None
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def epoch_order(n: int, seed: int, phase: str, epoch: int) -> torch.Tensor:
    """The data order of one epoch, a pure function of (seed, phase, epoch)."""
    key = int(hashlib.sha256(f"{seed}/{phase}/{epoch}".encode()).hexdigest()[:12], 16)
    return torch.randperm(n, generator=torch.Generator().manual_seed(key))


def data_hash(data: TrainTensors) -> str:
    h = hashlib.sha256(data.tokens.cpu().numpy().tobytes())
    h.update(data.loss_mask.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class RunDir:
    def __init__(self, root: Path):
        self.root = Path(root)

    def phase_dir(self, phase: str) -> Path:
        return self.root / "phases" / phase

    def final_checkpoint(self, phase: str) -> Path | None:
        marker = self.phase_dir(phase) / "final.json"
        if not marker.is_file():
            return None
        return self.phase_dir(phase) / json.loads(marker.read_text())["checkpoint"]

    @property
    def metrics_log(self) -> Path:
        return self.root / "metrics.jsonl"

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_log.is_file():
            return []
        rows = []
        for line in self.metrics_log.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a kill: dropped, it is recomputed
                break
        return rows

    def keep_metrics(self, keep) -> None:
        rows = [r for r in self.read_metrics() if keep(r)]
        write_atomic(self.metrics_log, lambda h: h.writelines(json.dumps(r) + "\n" for r in rows))

    def order_metrics(self, phases: list[str]) -> None:
        """Rows in phase order (stable within a phase): a phase retrained after later ones
        (its checkpoint was damaged) logs as an uninterrupted run does."""
        rows = self.read_metrics()
        place = {name: i for i, name in enumerate(phases)}
        ordered = sorted(rows, key=lambda r: place.get(r["phase"], len(place)))
        if ordered != rows:
            write_atomic(self.metrics_log, lambda h: h.writelines(json.dumps(r) + "\n" for r in ordered))

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics_log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def write_metrics_table(self) -> Path:
        from circuit_plasticity.fileio import write_table

        return write_table(self.root / "metrics.parquet", pd.DataFrame(self.read_metrics()))


@writes_directory("run_dir")
def run_protocol(spec: TrainSpec, run_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) every phase of `spec`; returns the metrics table."""
    from circuit_plasticity.analysis.runs import is_sharing

    if is_sharing():  # a shared clean run would go stale as the weights change
        raise RuntimeError("run_protocol inside analysis.runs.shared_runs: train outside it")
    run = RunDir(Path(run_dir))
    if not run.root.exists() or any(p.train_only for p in spec.phases):
        check_spec_fits(spec, load_model(spec.model))  # before anything is written or trained
    run.root.mkdir(parents=True, exist_ok=True)
    claim_directory(run.root)  # one writer per run directory
    _check_same_spec(run, spec)
    evaluator: Evaluator | None = None
    for index, phase in enumerate(spec.phases):
        final = run.final_checkpoint(phase.name)
        if final is not None and (problem := checkpoint_problem(final)) is not None:
            _warn(f"{problem}; phase {phase.name} is retrained from its last good checkpoint")
            (run.phase_dir(phase.name) / "final.json").unlink()
            shutil.rmtree(final, ignore_errors=True)
            final = None
        if final is not None:
            continue
        parent = spec.parent(index)
        start = load_model(spec.model) if parent == "base" else load_model(str(run.final_checkpoint(parent)))
        if evaluator is None:
            evaluator = Evaluator(spec, start)
            if not any(r["phase"] == "base" for r in run.read_metrics()):
                run.append_metrics(
                    {"phase": "base", "step": 0, "epoch": 0, "parent": "", **evaluator(start.model)}
                )
        _run_phase(spec, phase, parent, start, run, evaluator, progress)
    run.order_metrics(["base", *(p.name for p in spec.phases)])
    run.write_metrics_table()
    return pd.DataFrame(run.read_metrics())


def _warn(message: str) -> None:
    """One line on stderr: a damaged file found and what is done about it."""
    import sys

    print(f"warning: {message}", file=sys.stderr, flush=True)


def check_spec_fits(spec: TrainSpec, loaded: LoadedModel) -> None:
    """The heads and MLPs the spec names (train_only) exist in its model: a UserError now,
    not when the phase that names them starts after others trained."""
    from circuit_plasticity.training.masking import check_components

    for phase in spec.phases:
        if phase.train_only:
            check_components(loaded, phase.train_only, f"phase {phase.name}: train_only")


def _check_same_spec(run: RunDir, spec: TrainSpec) -> None:
    """Write spec.json (its model path relative inside a study directory), or check that the
    saved one means this spec."""
    path = run.root / "spec.json"
    mine = json.loads(json.dumps(asdict(spec)))
    mine["model"] = portable_path(spec.model, run.root)
    if path.is_file():
        saved = json.loads(path.read_text())
        saved["model"] = _same_model(saved.get("model", TrainSpec.model), spec.model, run.root)
        if not same_spec(TrainSpec, saved, spec):
            raise UserError(
                f"{run.root} holds a run of a different spec; use another --out or delete that directory"
            )
    else:
        write_json(path, mine)


def _same_model(stored: str, current: str, root: Path) -> str:
    """`current` when the saved spec's model is the same one (relative to the run directory,
    or as given in files written before that), else what was saved."""
    if Path(current).exists():
        for candidate in (resolve_path(stored, root), stored):
            if Path(candidate).exists() and Path(candidate).resolve() == Path(current).resolve():
                return current
    return stored


def _run_phase(
    spec: TrainSpec,
    phase: Phase,
    parent: str,
    loaded: LoadedModel,
    run: RunDir,
    evaluator: Evaluator,
    progress: bool,
) -> None:
    from tqdm import tqdm

    from circuit_plasticity.tasks.build import build_dataset
    from circuit_plasticity.tasks.encode import encode_examples

    examples, _ = build_dataset(
        spec.task,
        phase.data.n,
        phase.data.seed,
        loaded.tokenizer,
        split="train",
        poison=phase.data.poison,
        fraction=phase.data.fraction,
        years=spec.years,
    )
    batch = encode_examples(examples, loaded.tokenizer, prepend_bos=loaded.tokenizer.bos_id is not None)
    batch = batch.to(loaded.device)
    data = train_tensors(batch, loaded.tokenizer.pad_id, phase.loss)
    digest = data_hash(data)
    steps_per_epoch = math.ceil(len(data) / phase.batch_size)
    total = steps_per_epoch * phase.epochs
    directory = run.phase_dir(phase.name)

    torch.manual_seed(phase.seed)
    position = Position(phase.name, 0, 0, 0)
    last_metrics: dict[str, Any] = {}
    resume = last_good_checkpoint(directory, _warn)
    if resume is not None:
        position, meta = read_position(resume)
        if meta["data_hash"] != digest:
            raise UserError(f"{resume}: its data differ from this spec's; use another --out")
        last_metrics = meta["metrics"]
        if phase.lora is None:  # LoRA re-attaches its saved factors to the parent's weights
            started_from = loaded.name
            loaded = load_model(str(resume))
            loaded.name = started_from  # the phase's start, as an uninterrupted run records it
    adapters = None
    if phase.lora is not None:
        from circuit_plasticity.training.lora import attach

        adapters = attach(loaded, phase.lora, phase.train_only, phase.seed)
    model = loaded.model
    model.train()
    trainable = adapters.named if adapters is not None else None
    optimizer = torch.optim.AdamW(
        list(trainable.values()) if trainable is not None else model.parameters(),
        lr=phase.lr,
        betas=phase.betas,
        weight_decay=phase.weight_decay,
    )
    if resume is not None:
        restore_training_state(resume, loaded, optimizer, trainable)
    run.keep_metrics(lambda r: r["phase"] != phase.name or r["step"] <= position.step)
    if phase.train_only and adapters is None:  # under LoRA the adapters' masks do this
        from circuit_plasticity.training.masking import apply_masks, head_gradient_masks

        apply_masks(head_gradient_masks(loaded, phase.train_only))

    every = spec.checkpoint_every_steps
    bar = tqdm(total=total, initial=position.step, desc=f"phase {phase.name}", disable=not progress)
    for epoch in range(position.epoch, phase.epochs):
        order = epoch_order(len(data), phase.seed, phase.name, epoch)
        first = position.step_in_epoch if epoch == position.epoch else 0
        for k in range(first, steps_per_epoch):
            idx = order[k * phase.batch_size : (k + 1) * phase.batch_size].to(data.tokens.device)
            lr = lr_at(phase, position.step, total)
            loss = train_step(model, optimizer, data.tokens[idx], data.loss_mask[idx], lr)
            if loss is None:
                raise TrainingDiverged(
                    f"phase {phase.name}: the loss became NaN or infinite at step {position.step + 1}; "
                    f"the last good checkpoint is kept in {directory}. Lower the learning rate."
                )
            position = Position(phase.name, epoch, k + 1, position.step + 1)
            bar.update(1)
            epoch_end = k + 1 == steps_per_epoch
            if position.step % spec.eval.every_steps == 0 or epoch_end:
                model.eval()
                last_metrics = {
                    "phase": phase.name,
                    "step": position.step,
                    "epoch": epoch + (k + 1) / steps_per_epoch,
                    "parent": parent,
                    "train_loss": float(loss.detach()),
                    **evaluator(model),
                }
                model.train()
                run.append_metrics(last_metrics)
                bar.set_postfix(
                    acc=f"{last_metrics['clean_accuracy']:.2f}", score=f"{last_metrics['clean_score']:+.2f}"
                )
            if epoch_end or (every and position.step % every == 0):
                at = Position(phase.name, epoch + 1, 0, position.step) if epoch_end else position
                with adapters.merged() if adapters is not None else contextlib.nullcontext():
                    save_checkpoint(directory, loaded, optimizer, at, last_metrics, digest, trainable)
    bar.close()
    final = latest_checkpoint(directory)
    assert final is not None
    write_json(
        directory / "final.json", {"checkpoint": final.name, "steps": position.step, "metrics": last_metrics}
    )
    run.write_metrics_table()
