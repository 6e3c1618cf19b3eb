"""Paths stored in run directories: relative inside a study (so it can move), absolute for any
other local path (so a path given relative to the working directory is never misread), names
as given; and a resume that recognises its model however it was spelled."""

from __future__ import annotations

import os
from pathlib import Path

from circuit_plasticity.fileio import STUDY_MARKER, portable_path, resolve_path


def test_inside_a_study_paths_are_relative_and_resolve_back(tmp_path):
    study = tmp_path / "study"
    (study / "seeds" / "seed-0" / "phases" / "poisoned" / "step-1").mkdir(parents=True)
    (study / STUDY_MARKER).write_text("{}")
    where = study / "seeds" / "seed-0" / "repair"
    target = study / "seeds" / "seed-0" / "phases" / "poisoned" / "step-1"
    stored = portable_path(str(target), where)
    assert stored == "../phases/poisoned/step-1"
    assert Path(resolve_path(stored, where)) == target.resolve()
    (where / "x").mkdir(parents=True)
    inner = portable_path(str(where / "x"), where)
    assert inner == "./x" and Path(resolve_path(inner, where)) == (where / "x").resolve()


def test_other_local_paths_become_absolute_and_names_stay(tmp_path, monkeypatch):
    (tmp_path / "mymodel").mkdir()
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    stored = portable_path("./mymodel", "run")  # no study: nothing is relative to the file
    assert stored == str((tmp_path / "mymodel").resolve()) and os.path.isabs(stored)
    assert resolve_path(stored, "run") == stored
    assert portable_path("toy-ioi", "run") == "toy-ioi" and portable_path("gpt2", "run") == "gpt2"


def test_resume_recognises_the_model_however_the_saved_spec_spelled_it(tmp_path, monkeypatch):
    from circuit_plasticity.training.loop import _same_model

    (tmp_path / "mymodel").mkdir()
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path)
    for saved in ("./mymodel", str(tmp_path / "mymodel"), "../mymodel"):  # old, absolute, relative
        assert _same_model(saved, "./mymodel", Path("run")) == "./mymodel", saved
    (tmp_path / "other").mkdir()
    assert _same_model("./other", "./mymodel", Path("run")) == "./other"  # a different model stays


def test_a_cached_table_in_the_old_wide_format_is_made_again(tmp_path):
    """A study resumed from before the long format rebuilds its per-seed tables, not the report's
    figures on the wrong columns."""
    import pandas as pd

    from circuit_plasticity.fileio import write_table
    from circuit_plasticity.study.findings import _cached

    path = tmp_path / "cmap.parquet"
    write_table(path, pd.DataFrame({"layer": [0], "head": [1], "share": [0.5]}))  # old, wide
    long = pd.DataFrame({"layer": [0], "head": [1], "measure": ["share"], "value": [0.5]})
    assert list(_cached(path, lambda: long).columns) == list(long.columns)
    assert "value" in pd.read_parquet(path).columns
    assert _cached(path, lambda: 1 / 0).value.tolist() == [0.5]  # long now: read, not made
