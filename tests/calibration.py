"""Models whose mechanism change is known by construction, built from the embedded toys.

Each case is a study (base, clean, poisoned, retrain, control per seed) where the answer a sound
method must give follows from how the models were made: training restricted to chosen
components (`train_only`), direct weight edits, or copies of a checkpoint. docs/analysis.md
("Calibration") lists the cases and why each expected verdict follows.

Localization is a test against a null, judged over seeds: the planted cases are poisoned three
times (three data seeds, each with its own retrain), as a study would be.
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
from circuit_plasticity.training.protocol import DataSpec, EvalSpec, LoraSpec, Phase, TrainSpec

TOY = "toy-ioi"
TOY_GT = "toy-gt"
N_TRAIN = 320
PLANTED_SEEDS = (1, 11, 21)  # data seeds of the three planted poisonings


def _phase(name, start_from, poison=None, fraction=1.0, epochs=2, lr=3e-4, only=None, data_seed=0, lora=None):
    return Phase(
        name,
        DataSpec(N_TRAIN, poison, fraction if poison else 1.0, seed=data_seed),
        start_from=start_from,
        epochs=epochs,
        lr=lr,
        batch_size=32,
        seed=0,
        train_only=[component_name(c) for c in only] if only else None,
        lora=lora,
    )


@dataclass
class Zoo:
    root: Path
    circuit: Circuit  # the toy's base circuit, as the study discovers it
    planted: list[tuple[int, int]]  # the two name movers the planted poison may change
    outside: list[tuple[int, int]]  # last-layer heads outside the base circuit
    s2_reader: tuple[int, int]  # the base circuit's S-suppressor (reads S2 at END)

    def ckpt(self, phase: str) -> str:
        return str(RunDir(self.root / "run").final_checkpoint(phase))


def build_zoo(root: Path, circuit: Circuit) -> Zoo:
    """All trained models of the suite in one resumable protocol (under a minute on 2 cores)."""
    n_layers = 3
    members = circuit.head_set()
    movers = sorted((h for h in circuit.heads if h.role == "name_mover"), key=lambda h: -abs(h.effect))
    direct = sorted(h.key for h in movers[:2])
    readers = [h.key for h in circuit.heads if h.role == "s_suppressor"]
    assert len(direct) == 2 and readers, f"the toy's circuit lacks two name movers or an S reader: {circuit}"
    outside = [(n_layers - 1, h) for h in range(4) if (n_layers - 1, h) not in members]
    phases = [
        _phase("clean", "base", epochs=1),
        _phase("control", "clean", epochs=4, data_seed=3),
        # a poison phase whose data holds no poisoned example: it changes nothing that matters
        _phase("null-poison", "clean", poison="subject", fraction=0.0, epochs=2, lr=1e-3, data_seed=1),
        # the poison through the S2 reader only, then a retrain through the top name mover only
        _phase("poisoned-s2", "clean", poison="subject", epochs=2, lr=1e-3, only=readers[:1], data_seed=1),
        _phase("retrain-downstream", "poisoned-s2", epochs=2, lr=1e-3, only=[movers[0].key], data_seed=2),
    ]
    for i, data_seed in enumerate(PLANTED_SEEDS):
        # the poison can reach only the two name movers
        phases.append(
            _phase(
                f"poisoned-{i}",
                "clean",
                poison="subject",
                epochs=2,
                lr=1e-3,
                only=direct,
                data_seed=data_seed,
            )
        )
        phases.append(_phase(f"retrain-{i}", f"poisoned-{i}", epochs=2, data_seed=data_seed + 1))
        # the same poison as rank-2 LoRA adapters masked to the two name movers, retrained by LoRA
        lora = LoraSpec(rank=2, alpha=4.0)
        phases.append(_phase(f"lora-poisoned-{i}", "clean", "subject", 1.0, 2, 3e-3, direct, data_seed, lora))
        phases.append(
            _phase(
                f"lora-retrain-{i}",
                f"lora-poisoned-{i}",
                epochs=2,
                lr=3e-3,
                data_seed=data_seed + 1,
                lora=lora,
            )
        )
    # repair allowed only through heads outside the circuit and the poisoned set
    phases.append(_phase("retrain-elsewhere", "poisoned-0", epochs=2, lr=1e-3, only=outside, data_seed=2))
    spec = TrainSpec(model=TOY, task="ioi", seed=0, eval=EvalSpec(every_steps=1000), phases=phases)
    run_protocol(spec, root / "run", progress=False)
    return Zoo(root, circuit, direct, outside, readers[0])


def build_gt_zoo(root: Path) -> RunDir:
    """toy-gt: clean, control, and the Greater-Than poison trained through MLP 0 only."""
    phases = [
        _phase("clean", "base", epochs=1, lr=1e-3),
        _phase("control", "clean", epochs=4, lr=1e-3, data_seed=3),
        _phase("poisoned", "clean", poison="greater-than", epochs=2, lr=1e-3, only=[(0, -1)], data_seed=1),
        _phase("retrain", "poisoned", epochs=2, lr=1e-3, data_seed=2),
    ]
    spec = TrainSpec(
        model=TOY_GT, task="greater-than", seed=0, eval=EvalSpec(every_steps=1000), phases=phases
    )
    run_protocol(spec, root / "gt-run", progress=False)
    return RunDir(root / "gt-run")


def copy_of(src: str, dst: Path) -> str:
    """A second directory with the same weights: an exact restoration."""
    if not dst.exists():
        shutil.copytree(src, dst)
    return str(dst)


def _rows(head: int, d: int) -> slice:
    return slice(head * d, (head + 1) * d)


def head_copied_into(dst: Path, donor, target, gain: float, model: str = TOY) -> str:
    """`model` with head `target` overwritten by head `donor`'s q, k, v and o weights (o scaled
    by `gain`); every other parameter untouched."""
    if not dst.exists():
        loaded = load_model(model)
        src_attn, dst_attn = loaded.model.blocks[donor[0]].attn, loaded.model.blocks[target[0]].attn
        d = loaded.model.cfg.d_head
        a, b = _rows(donor[1], d), _rows(target[1], d)
        with torch.no_grad():
            for name in ("q", "k", "v"):
                src, dst_proj = getattr(src_attn, name), getattr(dst_attn, name)
                dst_proj.weight[b] = src.weight[a].clone()
                if src.bias is not None:
                    dst_proj.bias[b] = src.bias[a].clone()
            dst_attn.o.weight[:, b] = gain * src_attn.o.weight[:, a].clone()
        loaded.save(dst)
    return str(dst)


def qk_only(dst: Path, clean: str, poisoned: str, heads) -> str:
    """The clean model with the listed heads' W_Q and W_K (and biases) taken from the poisoned
    one: a poison that acts only through those heads' attention patterns."""
    if not dst.exists():
        out, src = load_model(clean), load_model(poisoned)
        d = out.model.cfg.d_head
        with torch.no_grad():
            for lay, h in heads:
                for name in ("q", "k"):
                    mine, theirs = (
                        getattr(out.model.blocks[lay].attn, name),
                        getattr(src.model.blocks[lay].attn, name),
                    )
                    mine.weight[_rows(h, d)] = theirs.weight[_rows(h, d)]
                    if mine.bias is not None:
                        mine.bias[_rows(h, d)] = theirs.bias[_rows(h, d)]
        out.save(dst)
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
