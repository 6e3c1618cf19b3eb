"""Targeted repair (beyond the study): retrain only chosen heads of the poisoned model on clean
data. The study trains the localized heads and, as the null, as many random other heads, on the
same data and for as long as the full retrain (study/judge.py compares the three)."""

from __future__ import annotations

from pathlib import Path

from circuit_plasticity.training.loop import RunDir, run_protocol
from circuit_plasticity.training.protocol import DataSpec, EvalSpec, Phase, TrainSpec


def train_heads(
    poisoned: str, heads: list[str], plan, out: Path, seed: int, task: str = "ioi", years=None
) -> Path | str:
    """The final checkpoint of training only `heads` (names: a1.h0, m1) from `poisoned`, or the
    reason it cannot be done on this model. Resumable like every training run."""
    from circuit_plasticity.errors import UserError

    run = RunDir(out)
    final = run.final_checkpoint("repair")
    if final is not None:
        return final
    spec = TrainSpec(
        model=poisoned,
        task=task,
        years=years,
        seed=seed,
        eval=EvalSpec(every_steps=plan.eval_every),
        phases=[
            Phase(
                "repair",
                DataSpec(plan.n_train, None, 1.0, seed=plan.data_seeds.get(seed, plan.data_seed)),
                epochs=plan.epochs,
                lr=plan.lr,
                batch_size=plan.batch_size,
                seed=seed,
                train_only=heads,
            )
        ],
    )
    try:
        run_protocol(spec, run.root, progress=False)
    except UserError as error:
        return str(error)
    return run.final_checkpoint("repair")
