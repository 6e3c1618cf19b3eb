"""The per-batch cache of shared runs (analysis/runs.py): the same answers with it as without
it, fewer forward passes, and no stale value once weights change."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from circuit_plasticity.analysis import runs
from circuit_plasticity.analysis.metrics import clean_end_logits
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


def _count_passes(model) -> tuple[list[int], object]:
    """A counter of forward passes (each embeds its tokens once) and the hook's handle."""
    seen = [0]

    def count(module, args):
        seen[0] += 1

    return seen, model.embed.register_forward_pre_hook(count)


def _written(result, out: Path) -> dict[str, object]:
    result.write(out)
    tables = {p.name: pd.read_parquet(p) for p in sorted(out.glob("*.parquet"))}
    files = {p.name: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    return tables | files


@pytest.mark.parametrize(("name", "task"), [("toy-ioi", "ioi"), ("toy-gt", "greater-than")])
def test_analysis_is_identical_with_and_without_shared_runs(name, task, tmp_path, monkeypatch):
    """Every table and file `analyze` writes, bit for bit, on a model without and with MLPs;
    and the shared version runs fewer forward passes."""
    from circuit_plasticity.analysis.pipeline import analyze_model

    loaded = load_model(name, device="cpu")
    batch = task_batch(loaded, task, n=48, seed=3, split="test")
    seen, handle = _count_passes(loaded.model)
    shared = _written(analyze_model(loaded, batch, minimality_steps=1, greedy_curve=False), tmp_path / "a")
    shared_passes = seen[0]
    monkeypatch.setattr(runs, "shared_runs", contextlib.nullcontext)
    seen[0] = 0
    alone = _written(analyze_model(loaded, batch, minimality_steps=1, greedy_curve=False), tmp_path / "b")
    handle.remove()
    assert shared.keys() == alone.keys() and len(shared) >= 8
    for key, value in shared.items():
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(value, alone[key], check_exact=True)
        else:
            assert value == alone[key], key
    assert shared_passes < seen[0]


def test_reuse_computes_once_per_model_and_input_and_only_inside_the_block():
    made = []

    def make():
        made.append(1)
        return len(made)

    model, a, b = object(), torch.zeros(2), torch.zeros(2)
    assert [runs.reuse("k", model, (a,), make) for _ in range(2)] == [1, 2]  # outside: no memory
    with runs.shared_runs():
        assert runs.reuse("k", model, (a,), make) == 3
        assert runs.reuse("k", model, (a,), make) == 3
        assert runs.reuse("k", model, (b,), make) == 4  # equal values, other data: computed anew
        assert runs.reuse("other", model, (a,), make) == 5
        with runs.shared_runs():  # an inner block joins the outer one
            assert runs.reuse("k", model, (a,), make) == 3
    assert runs.reuse("k", model, (a,), make) == 6


def test_training_inside_shared_runs_is_refused_and_weights_changed_outside_are_seen():
    from circuit_plasticity.training.loop import run_protocol
    from circuit_plasticity.training.protocol import TrainSpec

    loaded = load_model("toy-ioi", device="cpu")
    batch = task_batch(loaded, "ioi", n=8, seed=0, split="test")
    with runs.shared_runs():
        before = clean_end_logits(loaded.model, batch)
        with pytest.raises(RuntimeError, match="train outside"):
            run_protocol(TrainSpec(), "/nonexistent/never-written")
    with torch.no_grad():
        loaded.model.W_U.mul_(2.0)
    torch.testing.assert_close(clean_end_logits(loaded.model, batch), 2 * before, atol=1e-4, rtol=1e-4)
