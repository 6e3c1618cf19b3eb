"""Models whose mechanism change is known by construction, built from the embedded toy.

Each `Case` is one seed of the study (base, clean, poisoned, retrain, control) where the answer
a sound method must give follows from how the models were made: training restricted to chosen
heads (`train_only`), direct weight edits, or copies of a checkpoint. docs/analysis.md
("Calibration") lists the cases and why each expected verdict follows.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.components import component_name
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.loop import RunDir, run_protocol
from circuit_plasticity.training.protocol import DataSpec, EvalSpec, Phase, TrainSpec

TOY = "toy-ioi"
N_TRAIN = 320


def _phase(name, start_from, poison=None, fraction=1.0, epochs=2, lr=3e-4, only=None, data_seed=0):
    return Phase(
        name,
        DataSpec(N_TRAIN, poison, fraction if poison else 1.0, seed=data_seed),
        start_from=start_from,
        epochs=epochs,
        lr=lr,
        batch_size=32,
        seed=0,
        train_only=[component_name(c) for c in only] if only else None,
    )


def heads_name(heads) -> str:
    return ",".join(component_name(c) for c in heads)


@dataclass
class Zoo:
    root: Path
    circuit: Circuit  # the toy's base circuit, as the study discovers it
    planted: list[tuple[int, int]]  # the heads the planted poison may change
    outside: list[tuple[int, int]]  # last-layer heads outside the base circuit

    def ckpt(self, phase: str) -> str:
        return str(RunDir(self.root / "run").final_checkpoint(phase))


def build_zoo(root: Path, circuit: Circuit) -> Zoo:
    """All trained models of the suite in one resumable protocol (about 20 s on 2 cores)."""
    n_layers = 3
    members = circuit.head_set()
    direct = sorted(h.key for h in circuit.heads if h.role == "name_mover")[:2]
    outside = [(n_layers - 1, h) for h in range(4) if (n_layers - 1, h) not in members]
    phases = [
        _phase("clean", "base", epochs=1),
        _phase("control", "clean", epochs=4, data_seed=3),
        # the poison can reach only the two name movers
        _phase("poisoned", "clean", poison="subject", epochs=2, lr=1e-3, only=direct, data_seed=1),
        # a poison phase whose data holds no poisoned example: it changes nothing that matters
        _phase("null-poison", "clean", poison="subject", fraction=0.0, epochs=2, lr=1e-3, data_seed=1),
        _phase("retrain", "poisoned", epochs=2, data_seed=2),
        # repair allowed only through heads outside the circuit and the poisoned set
        _phase("retrain-elsewhere", "poisoned", epochs=2, lr=1e-3, only=outside, data_seed=2),
    ]
    spec = TrainSpec(model=TOY, task="ioi", seed=0, eval=EvalSpec(every_steps=1000), phases=phases)
    run_protocol(spec, root / "run", progress=False)
    return Zoo(root, circuit, direct, outside)


def copy_of(src: str, dst: Path) -> str:
    """A second directory with the same weights: an exact restoration."""
    if not dst.exists():
        shutil.copytree(src, dst)
    return str(dst)


def mover_copied_into(dst: Path, mover, target, gain: float) -> str:
    """The toy with head `target` (a last-layer head outside the circuit, so nothing reads it)
    overwritten by a copy of the name mover's weights, its output scaled by `gain`: every
    base-circuit member computes exactly what it did, and any gain lives in `target`."""
    if not dst.exists():
        loaded = load_model(TOY)
        src_attn, dst_attn = loaded.model.blocks[mover[0]].attn, loaded.model.blocks[target[0]].attn
        d = loaded.model.cfg.d_head
        a, b = slice(mover[1] * d, (mover[1] + 1) * d), slice(target[1] * d, (target[1] + 1) * d)
        with torch.no_grad():
            for name in ("q", "k", "v"):
                src, dst_proj = getattr(src_attn, name), getattr(dst_attn, name)
                dst_proj.weight[b] = src.weight[a]
                if src.bias is not None:
                    dst_proj.bias[b] = src.bias[a]
            dst_attn.o.weight[:, b] = gain * src_attn.o.weight[:, a]
        loaded.save(dst)
    return str(dst)


def scaled_outputs(dst: Path, heads, factor: float) -> str:
    """The toy with the listed heads' output projections scaled: a gain that lives only in them."""
    if not dst.exists():
        loaded = load_model(TOY)
        d = loaded.model.cfg.d_head
        with torch.no_grad():
            for lay, h in heads:
                loaded.model.blocks[lay].attn.o.weight[:, h * d : (h + 1) * d] *= factor
        loaded.save(dst)
    return str(dst)
