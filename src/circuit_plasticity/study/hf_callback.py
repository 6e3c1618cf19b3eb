"""Track the study's circuit during anyone's training: a `transformers.TrainerCallback`.

`CircuitTracker` measures a fixed circuit (the base model's, found as `judge` finds it, on the
prompts `judge` uses for that seed) at every checkpoint the Trainer saves (or every
evaluation), and writes the table `run` and `judge` write, `tracking.parquet` (phase, step,
component, layer, head, measure, value): the model's score, the circuit's score and
faithfulness, each member's direct effect. A saved checkpoint is read back from its folder
(a PEFT checkpoint: its adapter merged onto its base), so the model in training is never
touched; at an evaluation without a save the model is copied first.

    tracker = CircuitTracker("runs/clean-tracking", base="my/base", phase="clean")
    Trainer(model, args, train_dataset=data, callbacks=[tracker]).train()
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import TrainerCallback

from circuit_plasticity.fileio import write_table


class CircuitTracker(TrainerCallback):
    """The base circuit at every save (`at="save"`) or evaluation (`at="evaluate"`)."""

    def __init__(
        self,
        out: str | Path,
        base: str,
        phase: str = "train",
        task: str = "ioi",
        n: int = 160,
        seed: int = 0,
        circuit: str | Path | None = None,
        tokenizer: str | None = None,
        at: str = "save",
    ):
        from circuit_plasticity.analysis.circuit import Circuit
        from circuit_plasticity.study.judge import JudgeOptions, seed_batch

        if at not in ("save", "evaluate"):
            raise ValueError(f"at must be 'save' or 'evaluate', got {at!r}")
        self.out, self.phase, self.at, self.tokenizer = Path(out), phase, at, tokenizer
        self.base = _load(base, tokenizer)
        self.base_spec = str(base)
        self.batch = seed_batch(self.base, JudgeOptions(n=n, task=task), seed)  # judge's prompts
        if circuit is not None:
            self.circuit = Circuit.load(circuit)
        else:
            from circuit_plasticity.analysis.pipeline import circuit_of

            self.circuit = circuit_of(self.base, self.batch)
        self.rows: list[dict[str, Any]] = []
        if (self.out / "tracking.parquet").is_file():  # a resumed training keeps its rows
            self.rows = pd.read_parquet(self.out / "tracking.parquet").to_dict("records")

    @property
    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def measure(self, model_spec: str, phase: str, step: int) -> None:
        """Add the circuit's rows for the model at `model_spec` and write the table."""
        from circuit_plasticity.compare.tracking import circuit_strength
        from circuit_plasticity.models.layouts import ADAPTER, has_tokenizer

        folder = Path(model_spec)
        tokenizer = self.tokenizer
        if tokenizer is None and not has_tokenizer(folder) and not (folder / ADAPTER).is_file():
            tokenizer = self.base_spec  # a checkpoint saved without the tokenizer: the base's
        loaded = _load(model_spec, tokenizer, self.base.device)
        self.rows = [r for r in self.rows if not (r["phase"] == phase and r["step"] == step)]
        self.rows += [
            {"phase": phase, "step": step, **r}
            for r in circuit_strength(loaded.model, self.batch, self.circuit)
        ]
        write_table(self.out / "tracking.parquet", self.table)

    def on_train_begin(self, args, state, control, **kwargs):
        if not any(r["phase"] == "base" for r in self.rows):
            from circuit_plasticity.compare.tracking import circuit_strength

            rows = circuit_strength(self.base.model, self.batch, self.circuit)
            self.rows += [{"phase": "base", "step": 0, **r} for r in rows]
            write_table(self.out / "tracking.parquet", self.table)

    def on_save(self, args, state, control, **kwargs):
        if self.at == "save":
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.measure(str(folder), self.phase, state.global_step)

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if self.at == "evaluate" and model is not None:
            with tempfile.TemporaryDirectory() as tmp:
                _save_copy(model, Path(tmp))
                self.measure(tmp, self.phase, state.global_step)


def _load(spec: str, tokenizer: str | None, device=None):
    from circuit_plasticity.models.load import load_model

    return load_model(str(spec), device=None if device is None else str(device), tokenizer=tokenizer)


def _save_copy(model, folder: Path) -> None:
    """A copy of the model in training written to `folder` (a PEFT model: merged)."""
    clone = copy.deepcopy(model)
    if hasattr(clone, "merge_and_unload"):
        clone = clone.merge_and_unload()
    clone.save_pretrained(folder)
