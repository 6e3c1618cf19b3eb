"""examples/trainer_study.py end to end: the Hugging Face Trainer trains the phases (full
fine-tunes, and LoRA adapters), CircuitTracker tracks the circuit during training, `judge`
judges the Trainer output folders and tracks every checkpoint, the two tracking tables agree."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parent.parent / "examples" / "trainer_study.py"
ARGS = ["--n-train", "128", "--n", "40", "--save-every", "4", "--quick", "--n-random", "20"]


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_trainer_example_trains_tracks_and_judges(mode, tmp_path):
    if mode == "lora" and importlib.util.find_spec("peft") is None:
        pytest.skip("peft is not installed (pip install 'circuit-plasticity[peft]')")
    out = tmp_path / "study"
    extra = ["--lora"] if mode == "lora" else []
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *ARGS, *extra],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for finding in ("amplification", "localization", "neuroplasticity"):
        assert finding in done.stdout
    seed = out / "judged" / "seeds" / "seed-0"
    judged = pd.read_parquet(seed / "compare" / "tracking.parquet")
    for phase in ("clean", "poisoned", "retrain", "control"):
        steps = sorted(int(p.name.split("-")[1]) for p in (out / "phases" / phase).glob("checkpoint-*"))
        assert steps and sorted(judged[judged.phase == phase].step.unique()) == steps
        # the callback measured the same circuit on the same prompts during training
        during = pd.read_parquet(out / "tracking" / phase / "tracking.parquet")
        keys = ["phase", "step", "component", "measure"]
        both = during.merge(judged, on=keys, suffixes=("_during", "_judged"))
        assert len(both) == len(during[during.phase == phase]) + len(during[during.phase == "base"])
        assert (both.value_during - both.value_judged).abs().max() < 1e-4
    findings = pd.read_parquet(out / "judged" / "tables" / "findings.parquet").set_index("measure")["mean"]
    assert "hysteresis_gap_area" in findings.index
    record = json.loads((out / "judged" / "judge.json").read_text())["models"]["0"]
    assert record["clean"]["model"] == str(out / "phases" / "clean")  # the final model at the top
    if mode == "lora":
        from circuit_plasticity.models.load import load_model

        assert (out / "phases" / "clean" / "adapter_config.json").is_file()
        tokens = torch.randint(1, 300, (4, 12))
        with torch.no_grad():  # our merge of the adapter = the example's own merged model
            ours = load_model(str(out / "phases" / "clean"), "cpu").model(tokens)
            theirs = load_model(str(out / "merged" / "clean"), "cpu").model(tokens)
            base = load_model(str(out / "base"), "cpu").model(tokens)
        assert torch.allclose(ours, theirs, atol=1e-4) and not torch.allclose(ours, base, atol=1e-3)
