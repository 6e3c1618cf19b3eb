"""One torch-thread rule for every study process: `run` in-process, its pool workers and a
sweep point train with the same thread count (float reductions depend on it), so the same spec
gives the same bytes by `run` and as a sweep point."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

TINY = Path(__file__).resolve().parent.parent / "experiments" / "tiny-study.yaml"


class Trained(Exception):
    """Raised by the stand-in trainer: the thread count is recorded, nothing more is needed."""


@pytest.fixture
def threads_at_training(monkeypatch):
    """Replace training with a recorder of torch's thread count when training starts; the
    test process starts at a count different from the study's, so a path that sets nothing
    is caught."""
    from circuit_plasticity.study.experiment import STUDY_THREADS
    from circuit_plasticity.training import loop

    seen: list[int] = []

    def record(*_args, **_kwargs):
        seen.append(torch.get_num_threads())
        raise Trained

    before = torch.get_num_threads()
    torch.set_num_threads(STUDY_THREADS + 1)
    monkeypatch.setattr(loop, "run_protocol", record)
    yield seen
    torch.set_num_threads(before)


def test_run_its_workers_and_a_sweep_point_train_with_the_same_threads(tmp_path, threads_at_training):
    from circuit_plasticity.api import run_study
    from circuit_plasticity.study.experiment import STUDY_THREADS, _task, load_experiment
    from circuit_plasticity.sweep.executors import run_point

    spec = dataclasses.replace(load_experiment(TINY), workers=1)
    spec_json = json.loads(json.dumps(dataclasses.asdict(spec)))
    with pytest.raises(Trained):  # `run` of a 1-seed spec: in this process
        run_study(spec, tmp_path / "run", progress=False)
    assert torch.get_num_threads() == STUDY_THREADS + 1  # the caller's setting is given back
    with pytest.raises(Trained):  # a sweep point (what both executors call)
        run_point(spec_json, str(tmp_path / "point"))
    with pytest.raises(Trained):  # a pool worker's task of a many-seed `run`
        _task(spec_json, str(tmp_path / "pool"), "train", 0)
    assert threads_at_training == [STUDY_THREADS] * 3
