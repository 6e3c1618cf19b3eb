"""The whole study in one command: spec validation, a small end-to-end run, resume, escaping."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from circuit_plasticity.report.explain import Study, explain
from circuit_plasticity.report.html import Figure, Page, render_report

TINY = textwrap.dedent("""\
    seeds: [0, 1]
    n_train: 96
    clean_epochs: 1
    poison_epochs: 2
    retrain_epochs: 2
    eval_every_steps: 3
    analysis: {n: 40, n_random: 20}
    """)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuit_plasticity", *args], capture_output=True, text=True)


@pytest.mark.slow
def test_run_end_to_end_then_resume_does_nothing_again(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY)
    first = cli("run", str(spec), "--out", str(tmp_path / "run"), "--quiet", "--csv")
    assert first.returncode == 0, first.stderr[-2000:]
    report = tmp_path / "run" / "report" / "index.html"
    html = report.read_text()
    assert html.count("<img") >= 8 and "http://" not in html and "https://" not in html
    assert "targeted repair" in html
    verdicts = pd.read_parquet(tmp_path / "run" / "tables" / "verdicts.parquet")
    assert list(verdicts.finding) == ["amplification", "localization", "neuroplasticity", "targeted repair"]
    # two seeds (run on two processes) are below the default min_seeds (3): no yes, no no;
    # a criterion that no outcome could pass at this scale says so instead of "inconclusive"
    assert set(verdicts.verdict) <= {"inconclusive", "not testable at this scale"}
    assert "inconclusive" in set(verdicts.verdict)
    findings = pd.read_parquet(tmp_path / "run" / "tables" / "findings.parquet").set_index("measure")
    assert findings.loc["score_poisoned", "mean"] < findings.loc["score_clean", "mean"]
    # nodes or edges (issue 21): every phase against the control at equal steps
    edges = pd.read_parquet(tmp_path / "run" / "tables" / "edge_tracking.parquet")
    assert {"clean", "poisoned", "retrain", "control"} <= set(edges.phase)
    assert {"edges_poisoned_excess", "edges_retrain_edges_restored", "edges_seeds_clean_edge_change"} <= set(
        findings.index
    )
    assert "Nodes or edges" in html
    # a pair of seeds is no seed: its rows are in findings (over pairs), not in findings_by_seed
    by_seed = pd.read_parquet(tmp_path / "run" / "tables" / "findings_by_seed.parquet")
    assert not by_seed.measure.str.startswith("edges_seeds_").any()
    pairs = pd.read_parquet(tmp_path / "run" / "tables" / "edge_seed_pairs.parquet")
    assert sorted(zip(pairs.seed_a, pairs.seed_b, pairs.which, strict=True)) == [
        (0, 1, "base"),
        (0, 1, "clean"),
    ]
    changes = pd.read_parquet(tmp_path / "run" / "tables" / "edge_changes.parquet")
    assert {"clean", "poisoned", "retrain", "control"} <= set(changes.phase)
    assert "the edges that changed most per phase" in html
    for name in ("metrics", "heads", "circuits", "tracking", "cmap", "recovery", "weights"):
        assert (tmp_path / "run" / "tables" / f"{name}.parquet").is_file()
    for name in ("heads", "tracking", "cmap", "recovery", "weights", "amplification", "localization_heads"):
        table = pd.read_parquet(tmp_path / "run" / "tables" / f"{name}.parquet")  # one long format
        assert {"component", "layer", "head", "measure", "value"} <= set(table.columns), name
        members = table[table.component != "circuit"]
        # the origin view partitions every parameter: the parts no head or MLP owns are named too
        named = r"a\d+\.h\d+|m\d+" + (
            r"|embed|pos_embed|unembed|norms|attn_out_bias|other" if name == "localization_heads" else ""
        )
        assert members.component.str.fullmatch(named).all(), name
    assert "localization_weight_share_topk" in findings.index
    assert (tmp_path / "run" / "tables" / "heads.csv").is_file()
    compared = cli(
        "compare",
        str(tmp_path / "run" / "seeds" / "seed-0"),
        str(tmp_path / "run" / "seeds" / "seed-1"),
        "--out",
        str(tmp_path / "cmp"),
    )
    assert compared.returncode == 0, compared.stderr[-2000:]
    assert "amplification" in compared.stdout and (tmp_path / "cmp" / "tables" / "verdicts.parquet").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run" / "seeds").rglob("*.safetensors")}
    again = cli("run", str(spec), "--out", str(tmp_path / "run"), "--quiet")
    assert again.returncode == 0, again.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no checkpoint was rewritten

    # relocatable: no file names the old place; moved elsewhere, the study resumes where it
    # stopped (a repair phase and a seed's evidence undone here) and re-renders its report
    old = str(tmp_path / "run")
    assert not [p for p in (tmp_path / "run").rglob("*") if p.is_file() and old.encode() in p.read_bytes()]
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(old, moved)
    (moved / "seeds" / "seed-0" / "repair" / "phases" / "repair" / "final.json").unlink()
    (moved / "seeds" / "seed-0" / "compare" / "evidence.parquet").unlink()
    (moved / "report" / "index.html").unlink()
    stamps = {p: p.stat().st_mtime_ns for p in moved.rglob("*.safetensors")}
    resumed = cli("run", str(spec), "--out", str(moved), "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # resumed, nothing retrained
    assert (moved / "seeds" / "seed-0" / "repair" / "phases" / "repair" / "final.json").is_file()
    assert "targeted repair" in (moved / "report" / "index.html").read_text()


@pytest.mark.parametrize(
    "patch, message",
    [
        ("seedz: [1]", "unknown key 'seedz' (line 8)"),
        ("poison: everything", "poison"),
        ("lr: 2.0", "lr"),
    ],
)
def test_bad_experiment_spec_exits_2(tmp_path, patch, message):
    spec = tmp_path / "bad.yaml"
    spec.write_text(TINY + patch + "\n")
    r = cli("run", str(spec), "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()


def test_report_escapes_user_strings(tmp_path):
    evil = "<script>alert(1)</script>"
    verdicts = pd.DataFrame(
        [{"finding": evil, "verdict": evil, "reason": evil, "criteria": evil, "rule": evil}]
    )
    findings = pd.DataFrame(
        [
            {
                "measure": "amplification_member_share",
                "mean": 2.0,
                "ci_low": 1.5,
                "ci_high": 2.5,
                "n_seeds": 3,
                "interval": evil,
                "clipped": False,
            }
        ]
    )
    scores = pd.DataFrame([{"phase": evil, "score": 1.0, "ci_low": 0.5, "ci_high": 1.5, "accuracy": 0.9}])
    study = Study(findings, verdicts, {0: {"localization_top_heads": evil}}, {0: [evil]}, evil)
    page = Page(
        evil,
        {"model": evil, "seeds": evil},
        verdicts,
        findings,
        scores,
        [Figure(evil, evil, png=b"png"), Figure(evil, evil, missing=evil)],
        explain(study),
        {evil: evil},
        {
            "command": evil,
            "spec": {evil: evil},
            "models": [{"model": evil, "sha256": evil}],
            "machine": {evil: evil},
        },
        [evil],
    )
    text = render_report(tmp_path, page).read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text


def test_shipped_specs_validate_and_default_yaml_is_the_default():
    from pathlib import Path

    from circuit_plasticity.spec import from_mapping, load_yaml
    from circuit_plasticity.study.experiment import ExperimentSpec, check_study_phases, load_experiment
    from circuit_plasticity.training.protocol import TrainSpec

    root = Path(__file__).resolve().parent.parent / "experiments"
    from circuit_plasticity.sweep.spec import load_sweep

    for path in sorted(root.glob("*.yaml")):
        if path.name.startswith("sweep-"):
            assert len(load_sweep(path).points) > 1
        elif path.name == "toy-protocol.yaml":
            from_mapping(TrainSpec, load_yaml(path), source=str(path))
        else:
            check_study_phases(load_experiment(path))
    assert load_experiment(root / "default.yaml") == ExperimentSpec()


@pytest.mark.slow
def test_study_runs_on_a_hugging_face_gpt2_directory(tmp_path, tiny_gpt2_dir):
    """--model with a (tiny, random) GPT-2: the same pipeline, with MLPs, and a cost warning."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "seeds: [0]\nn_train: 48\nclean_epochs: 1\npoison_epochs: 1\nretrain_epochs: 1\n"
        "lr: 1.0e-3\nanalysis: {n: 40, n_random: 20}\n"
    )
    r = cli("run", str(spec), "--model", str(tiny_gpt2_dir), "--out", str(tmp_path / "run"), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "slow" in r.stderr and "training steps" in r.stderr
    assert (tmp_path / "run" / "report" / "index.html").is_file()
    heads = pd.read_parquet(tmp_path / "run" / "tables" / "heads.parquet")
    assert heads.layer.max() == 1 and heads["head"].max() == 3
