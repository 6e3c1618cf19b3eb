"""The CLI as a person reads it: flags shown as flags, a version, an example in every command's
help, eval's labels and counts, data's dropped words only for the pools the task uses."""

from __future__ import annotations

import json
from importlib.metadata import version

import typer
from typer.testing import CliRunner

from circuit_plasticity.cli import app

runner = CliRunner()


def _commands(group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer's own click types, not click's)
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_command_shows_flags_as_flags_and_an_example():
    root = typer.main.get_command(app)
    commands = list(_commands(root))
    assert len(commands) >= 12  # every command is visited, not only the top level
    for path, command in commands:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, path
        text = result.output
        assert "<bool>" not in text, f"{' '.join(path)}: a flag shown as taking a value"
        assert "Examples:" in text and f"circuit-plasticity {' '.join(path)}" in text, path
        flags = [p for p in command.params if getattr(p, "is_flag", False)]
        for flag in flags:  # a flag takes no value: no --no-x twin for a plain switch either
            assert not flag.secondary_opts or flag.name == "help", (path, flag.name)


def test_version_prints_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert (
        result.exit_code == 0
        and result.output.strip() == f"circuit-plasticity {version('circuit-plasticity')}"
    )


def test_eval_labels_and_integer_counts():
    as_json = runner.invoke(app, ["eval", "toy-ioi", "--n", "40", "--json"])
    assert as_json.exit_code == 0, as_json.output
    result = json.loads(as_json.output)
    assert result["n"] == 40 and isinstance(result["n"], int)
    text = runner.invoke(app, ["eval", "toy-ioi", "--n", "40"]).output
    assert "all_" not in text
    row = next(line for line in text.splitlines() if line.strip().startswith("all "))
    assert " 40 prompts " in row and "logit diff" in row


def test_eval_splits_counts_clean_and_poisoned(tmp_path):
    data = tmp_path / "p.jsonl"
    made = runner.invoke(
        app, ["data", "ioi", "--n", "30", "--poison", "subject", "--fraction", "0.5", "--out", str(data)]
    )
    assert made.exit_code == 0, made.output
    poisoned = json.loads(made.stdout)["poisoned"]  # the --split warning goes to stderr
    result = json.loads(runner.invoke(app, ["eval", "toy-ioi", "--data", str(data), "--json"]).output)
    assert result["poisoned_n"] == poisoned and result["clean_n"] == result["n"] - poisoned


def test_data_ioi_reports_only_the_pools_ioi_uses(tmp_path):
    """toy-ioi's tokenizer has no two-digit years: an IOI set must not report them dropped."""
    result = runner.invoke(
        app, ["data", "ioi", "--n", "20", "--tokenizer", "toy-ioi", "--out", str(tmp_path / "a.jsonl")]
    )
    assert result.exit_code == 0, result.output
    dropped = json.loads(result.stdout)["dropped_by_tokenizer"]
    assert set(dropped) <= {"names", "places", "objects"}
    from circuit_plasticity.tasks.build import WordPools

    pools = WordPools([], [], [], [], [], [], dropped={"names": ["Ann"], "years": ["01", "02"], "nouns": []})
    assert pools.dropped_counts("ioi") == {"names": 1}
    assert pools.dropped_counts("greater-than") == {"years": 2}
    assert pools.dropped_counts() == {"names": 1, "years": 2}


def test_loading_a_hugging_face_directory_prints_no_transformers_bars(tiny_gpt2_dir):
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "circuit_plasticity", "eval", str(tiny_gpt2_dir), "--n", "8"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Loading weights" not in r.stderr and "it/s]" not in r.stderr
