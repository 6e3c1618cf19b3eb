"""The `data` CLI: bad input exits 2 with a message naming the problem, and writes no file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuit_plasticity", *args], capture_output=True, text=True)


def test_data_ioi_writes_and_shows(tmp_path):
    out = tmp_path / "d.jsonl"
    r = cli(
        "data",
        "ioi",
        "--n",
        "20",
        "--seed",
        "0",
        "--poison",
        "subject",
        "--fraction",
        "0.5",
        "--out",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 20
    shown = json.loads(cli("data", "show", str(out)).stdout)
    assert shown["poisoned"] == 10 and shown["by_order"] == {"ABBA": 10, "BABA": 10}


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "ioi", "--n", "0"], "n must be a positive"),
        (["data", "ioi", "--n", "-3"], "n must be a positive"),
        (["data", "ioi", "--poison", "subject", "--fraction", "1.5"], "fraction must lie in"),
        (["data", "ioi", "--poison", "subject", "--fraction", "-0.1"], "fraction must lie in"),
        (["data", "ioi", "--poison", "bogus"], "unknown poison"),
        (["data", "greater-than", "--poison", "subject"], "does not apply"),
        (["data", "ioi", "--split", "middle"], "unknown split"),
        (["data", "sst2"], "No such command"),
    ],
)
def test_bad_input_exit_2_and_no_file(tmp_path, args, message):
    out = tmp_path / "never.jsonl"
    r = cli(*args, "--out", str(out))
    assert r.returncode == 2
    assert message in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_tokenizer_with_too_few_names(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.WordLevel(vocab={"<unk>": 0, "Mary": 1, "John": 2}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.save(str(tmp_path / "tok.json"))
    out = tmp_path / "d.jsonl"
    r = cli("data", "ioi", "--tokenizer", str(tmp_path / "tok.json"), "--out", str(out))
    assert r.returncode == 2 and "names" in r.stderr and not out.exists()


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "not valid JSON"),
        ('{"task": "ioi", "prompt": "x"}', "missing field"),
        ('{"task": "sst2"}', "field 'task'"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_jsonl_names_the_line(tmp_path, line, message):
    good = subprocess.run(
        [
            sys.executable,
            "-m",
            "circuit_plasticity",
            "data",
            "ioi",
            "--n",
            "2",
            "--out",
            str(tmp_path / "g.jsonl"),
        ],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text((tmp_path / "g.jsonl").read_text() + line + "\n")
    r = cli("data", "show", str(bad))
    assert r.returncode == 2 and message in r.stderr and "bad.jsonl:3" in r.stderr


def test_help_is_fast_and_lists_commands():
    r = cli("--help")
    assert r.returncode == 0 and "data" in r.stdout
    for sub in (["data", "--help"], ["data", "ioi", "--help"], ["data", "show", "--help"]):
        assert cli(*sub).returncode == 0
