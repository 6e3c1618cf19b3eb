"""Targeted repair (beyond the study): retrain only the heads that localization blamed for the
corruption, on the same clean data as the full retrain, and compare the two."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.analysis.faithfulness import evaluate_circuit
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.fileio import write_json
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch
from circuit_plasticity.training.loop import RunDir, run_protocol
from circuit_plasticity.training.masking import frozen_kv_heads
from circuit_plasticity.training.protocol import DataSpec, EvalSpec, Phase, TrainSpec


def targeted_repair(
    seed_dir: Path,
    base_model: str,
    seed: int,
    findings: dict[str, Any],
    retrain: Phase,
    n: int,
    eval_every: int,
    progress: bool = False,
) -> dict[str, Any]:
    """Train `retrain`'s data and length from the poisoned model, only the localized heads."""
    out = seed_dir / "compare" / "repair.json"
    if out.is_file():
        return json.loads(out.read_text())
    heads = [h for h in findings["localization_top_heads"].split(",") if h]
    poisoned = RunDir(seed_dir).final_checkpoint("poisoned")
    spec = TrainSpec(
        model=str(poisoned),
        task="ioi",
        seed=seed,
        eval=EvalSpec(every_steps=eval_every),
        phases=[
            Phase(
                "repair",
                DataSpec(retrain.data.n, None, 1.0, seed=retrain.data.seed),
                epochs=retrain.epochs,
                lr=retrain.lr,
                batch_size=retrain.batch_size,
                seed=seed,
                train_only=heads,
            )
        ],
    )
    run = RunDir(seed_dir / "repair")
    run_protocol(spec, run.root, progress=progress)
    repaired = load_model(str(run.final_checkpoint("repair")))
    batch = task_batch(repaired, "ioi", n=n, seed=20_000 + seed, split="test")
    with torch.no_grad():
        score = float(task_score(end_logits(repaired.model(batch.tokens), batch), batch).mean())
    drop = findings["score_base"] - findings["score_poisoned"]
    base_circuit = Circuit.load(seed_dir / "analysis" / "base" / "circuit.json")
    cfg = repaired.model.cfg
    result = {
        "repair_heads": ",".join(heads),
        "repair_score": score,
        "repair_score_recovery": (score - findings["score_poisoned"]) / drop if drop else float("nan"),
        "repair_base_circuit_faithfulness": evaluate_circuit(
            repaired.model, batch, base_circuit.head_set()
        ).faithfulness,
        "repair_trained_head_share": len(heads) / (cfg.n_layers * cfg.n_heads),
        # grouped-query attention: these heads trained Q and O only (their K/V is shared)
        "repair_heads_kv_frozen": ",".join(frozen_kv_heads(repaired.model, heads)),
    }
    write_json(out, result)
    return result
