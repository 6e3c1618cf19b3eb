"""Folders other tools write: Trainer output folders, checkpoints without tokenizer files,
mistyped paths on every route (CLI options, --seeds-file, the Python API)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from circuit_plasticity.errors import UserError
from circuit_plasticity.models.export import export_model
from circuit_plasticity.models.layouts import checkpoint_list, fallback_tokenizer, resolve
from circuit_plasticity.models.load import load_model
from circuit_plasticity.models.toy import TOY_DIR
from circuit_plasticity.study.judge import SeedModels, read_seed_file, validate_seeds


@pytest.fixture(scope="module")
def trainer_dir(tmp_path_factory):
    """A Trainer output folder: checkpoint-5 and checkpoint-10, saved without the tokenizer."""
    root = tmp_path_factory.mktemp("trainer")
    hf = export_model("toy-gt", root / "hf")
    run = root / "run"
    for step in (10, 5):
        ckpt = shutil.copytree(hf, run / f"checkpoint-{step}")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (ckpt / name).unlink()
    return run


def test_a_trainer_folder_is_recognised_and_its_checkpoints_listed(trainer_dir):
    with pytest.raises(UserError, match=r"Trainer output folder .*checkpoint-5, checkpoint-10.*@last"):
        load_model(str(trainer_dir))
    assert resolve(f"{trainer_dir}@last").endswith("checkpoint-10")
    assert resolve(f"{trainer_dir}@5").endswith("checkpoint-5")
    assert [s for s, _ in checkpoint_list(f"{trainer_dir}@all")] == [5, 10]
    with pytest.raises(UserError, match="no checkpoint-7; it has checkpoint-5, checkpoint-10"):
        resolve(f"{trainer_dir}@7")


def test_a_checkpoint_without_tokenizer_files_says_so_and_takes_tokenizer(trainer_dir):
    with pytest.raises(UserError, match=r"has no tokenizer files .*--tokenizer"):
        load_model(f"{trainer_dir}@last", "cpu")
    loaded = load_model(f"{trainer_dir}@last", "cpu", tokenizer="toy-gt")
    assert loaded.tokenizer.encode(" war")[0] == load_model("toy-gt", "cpu").tokenizer.encode(" war")[0]
    with fallback_tokenizer("toy-gt"):  # what a command's --tokenizer does
        assert load_model(f"{trainer_dir}@5", "cpu").tokenizer.vocab_size == loaded.tokenizer.vocab_size


def test_missing_paths_say_does_not_exist_on_every_route(tmp_path):
    for spec in (str(tmp_path / "nowhere"), "./nowhere", f"{tmp_path.name}/nowhere/deeper"):
        with pytest.raises(UserError, match="does not exist"):
            load_model(spec)
    seeds = tmp_path / "seeds.yaml"
    seeds.write_text(f"- {{base: toy-ioi, clean: {tmp_path}/typo, poisoned: toy-gt, retrain: {TOY_DIR}}}\n")
    with pytest.raises(UserError, match="typo does not exist"):
        validate_seeds(read_seed_file(seeds))
    with pytest.raises(UserError, match="does not exist"):
        validate_seeds([SeedModels(0, "toy-ioi", "my-clean/typo", "toy-gt", str(TOY_DIR))])
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuit_plasticity",
            "judge",
            "--out",
            str(tmp_path / "o"),
            "--seeds-file",
            str(seeds),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_data_warns_that_split_all_overlaps_the_held_out_prompts(tmp_path):
    def data(*extra):
        args = ["data", "ioi", "--n", "20", "--out", str(tmp_path / "d.jsonl"), *extra]
        return subprocess.run(
            [sys.executable, "-m", "circuit_plasticity", *args], capture_output=True, text=True
        )

    assert "--split train" in data().stderr  # the default, all
    assert "warning" not in data("--split", "train").stderr


def test_judge_options_take_trainer_folders_with_a_selector(trainer_dir):
    from circuit_plasticity.study.judge import expand_checkpoints, seeds_from_options

    (seed,) = seeds_from_options(["toy-gt"], [f"{trainer_dir}@all"], [f"{trainer_dir}@5"], ["toy-ioi"], [])
    seed = expand_checkpoints(seed)
    assert seed.clean.endswith("checkpoint-10") and seed.poisoned.endswith("checkpoint-5")
    assert [(p, s) for p, s, _ in seed.checkpoints] == [("clean", 5), ("clean", 10)]


def test_circuit_tracker_at_evaluation_measures_a_copy_of_the_model_in_training(trainer_dir, tmp_path):
    """`at="evaluate"`: the model in training is copied, measured, and left as it was."""
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM

    from circuit_plasticity.study.hf_callback import CircuitTracker

    base = trainer_dir.parent / "hf"
    tracker = CircuitTracker(
        tmp_path / "t", base=str(base), phase="clean", task="greater-than", n=30, at="evaluate"
    )
    model = AutoModelForCausalLM.from_pretrained(trainer_dir / "checkpoint-10")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = SimpleNamespace(global_step=10)
    tracker.on_train_begin(None, state, None)
    tracker.on_evaluate(None, state, None, model=model)
    table = tracker.table
    assert (
        sorted(table.phase.unique()) == ["base", "clean"] and (tmp_path / "t" / "tracking.parquet").is_file()
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the same checkpoint measured from its folder gives the same numbers
    tracker.measure(str(trainer_dir / "checkpoint-10"), "again", 10)
    a = tracker.table[tracker.table.phase == "clean"].value.to_numpy()
    b = tracker.table[tracker.table.phase == "again"].value.to_numpy()
    assert abs(a - b).max() < 1e-5
