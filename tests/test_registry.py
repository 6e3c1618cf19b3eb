"""The analysis registry: one signature, one result type whose table is the long format, and
the head profile and the report driven by it."""

from __future__ import annotations

import pandas as pd
import pytest

from circuit_plasticity.analysis import registry
from circuit_plasticity.models.load import load_model
from circuit_plasticity.training.evaluate import task_batch


@pytest.fixture(scope="module")
def models():
    out = {}
    for name, task in (("toy-ioi", "ioi"), ("toy-gt", "greater-than")):
        loaded = load_model(name, device="cpu")
        out[task] = (loaded, task_batch(loaded, task, n=24, seed=1, split="test"))
    return out


@pytest.mark.parametrize("task", registry.TASKS)
def test_every_analysis_gives_a_long_table_that_round_trips(task, models):
    loaded, batch = models[task]
    for name, analysis in registry.ANALYSES.items():
        if task not in analysis.tasks:
            with pytest.raises(ValueError, match="applies to"):
                registry.run(name, loaded.model, batch)
            continue
        result = registry.run(name, loaded.model, batch, registry.Options(tokenizer=loaded.tokenizer))
        measures = [c for c in result.frame.columns if c not in ("layer", "head")]
        assert measures and set(measures) <= set(analysis.measures), name
        table = result.table()
        assert list(table.columns) == registry.LONG_COLUMNS
        assert table.component.astype(str).str.fullmatch(r"a\d+\.h\d+|m\d+").all()
        assert len(table) == len(result.frame) * len(measures)  # one row per component and measure
        if table.empty:  # MLP analyses on an attention-only model
            assert name == "mlp_dla" and loaded.model.cfg.attn_only
            continue
        back = table.pivot(index=["layer", "head"], columns="measure", values="value").reset_index()
        expected = result.frame.sort_values(["layer", "head"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(back[expected.columns], expected, check_names=False, check_dtype=False)


@pytest.mark.parametrize("task", registry.TASKS)
def test_head_profile_holds_every_profile_measure_and_report_figures_exist(task, models):
    from circuit_plasticity.analysis.profile import head_profile

    loaded, batch = models[task]
    table, _ = head_profile(loaded.model, loaded.tokenizer, batch)
    produced = {
        c
        for name in registry.PROFILE
        if task in registry.ANALYSES[name].tasks
        for c in registry.run(name, loaded.model, batch, registry.Options(loaded.tokenizer)).frame.columns
    }
    assert produced - {"layer", "head"} <= set(table.columns)
    assert registry.figures(task) and {f.measure for f in registry.figures(task)} <= set(table.columns)
