"""Greater-Than end to end: the metric, MLPs as circuit components, the embedded toy-gt, the study
and its refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch
from reference import slow_mean_ablation, slow_mlp_path_patch_to_logits, slow_prob_diff

from circuit_plasticity.analysis.metrics import task_score


@pytest.fixture(scope="module")
def toy_gt():
    from circuit_plasticity.models.load import load_model

    return load_model("toy-gt", device="cpu")


def _batch(loaded, n: int, seed: int):
    from circuit_plasticity.training.evaluate import task_batch

    return task_batch(loaded, "greater-than", n=n, seed=seed, split="test")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuit_plasticity", *args], capture_output=True, text=True)


def test_probability_difference_matches_a_slow_softmax_loop(toy_gt):
    batch = _batch(toy_gt, 12, seed=3)
    end = torch.randn(len(batch), toy_gt.tokenizer.vocab_size, generator=torch.Generator().manual_seed(0)) * 3
    fast = task_score(end, batch)
    assert fast.tolist() == pytest.approx(slow_prob_diff(end, batch.year_ids, batch.year), abs=1e-5)
    # and it is differentiable, as EAP-IG needs
    end.requires_grad_(True)
    task_score(end, batch).sum().backward()
    assert end.grad is not None and end.grad.abs().sum() > 0


def test_held_out_nouns_never_appear_in_training_prompts(word_tokenizer):
    from circuit_plasticity.tasks.build import build_dataset

    train, _ = build_dataset("greater-than", 300, seed=1, tokenizer=word_tokenizer, split="train")
    test, _ = build_dataset("greater-than", 300, seed=1, tokenizer=word_tokenizer, split="test")
    assert {e.noun for e in train}.isdisjoint({e.noun for e in test})


def test_mean_ablation_of_heads_and_mlps_matches_a_slow_reference(toy_gt):
    from circuit_plasticity.analysis.ablation import knockout

    batch = _batch(toy_gt, 24, seed=4)
    for parts in ([(1, -1)], [(0, -1), (0, 1)], [(0, 2), (1, 0), (1, -1)]):
        fast = knockout(toy_gt.model, batch, parts).tolist()
        assert fast == pytest.approx(slow_mean_ablation(toy_gt.model, batch, parts).tolist(), abs=1e-4)


def test_faithfulness_ablates_mlps_outside_the_circuit(toy_gt):
    from circuit_plasticity.analysis.faithfulness import circuit_score
    from circuit_plasticity.analysis.hooks import component_labels

    batch = _batch(toy_gt, 24, seed=5)
    keep = {(0, 1), (1, -1)}
    outside = [c for c in component_labels(toy_gt.model) if c not in keep]
    assert any(c[1] < 0 for c in outside)  # MLP 0 is ablated too
    expected = float(slow_mean_ablation(toy_gt.model, batch, outside).mean())
    assert circuit_score(toy_gt.model, batch, keep) == pytest.approx(expected, abs=1e-4)


def test_discovery_scores_mlps_by_path_patching(toy_gt):
    from circuit_plasticity.analysis.discovery import discover_circuit

    batch = _batch(toy_gt, 24, seed=6)
    found = discover_circuit(toy_gt.model, batch, "toy-gt")
    effects = found.effects[(found.effects.measure == "path_logits") & (found.effects["head"] == -1)]
    assert sorted(effects.layer) == [0, 1]
    own = abs(found.circuit.meta["model_score"])
    with torch.no_grad():
        clean = task_score(toy_gt.model(batch.tokens)[torch.arange(len(batch)), batch.end], batch)
    for layer, value in zip(effects.layer, effects.value, strict=True):
        slow = float((slow_mlp_path_patch_to_logits(toy_gt.model, batch, int(layer)) - clean).mean()) / own
        assert value == pytest.approx(slow, abs=1e-4)


def test_toy_gt_is_partly_good_and_its_circuit_holds_heads_and_mlps_faithfully(toy_gt):
    """The model card's claims, on held-out nouns; the circuit is found on one set of held-out
    prompts and its faithfulness measured on another."""
    from circuit_plasticity.analysis.faithfulness import evaluate_circuit
    from circuit_plasticity.analysis.metrics import evaluate
    from circuit_plasticity.analysis.pipeline import circuit_of

    assert toy_gt.config["attn_only"] is False
    found_on, measured_on = _batch(toy_gt, 80, seed=7), _batch(toy_gt, 80, seed=8)
    score = float(evaluate(toy_gt.model, measured_on)["score"].mean())
    assert 0 < score < 0.8  # positive, with room for fine-tuning to grow (the study measures it)
    circuit = circuit_of(toy_gt, found_on)
    members = circuit.head_set()
    assert any(h >= 0 for _, h in members) and any(h < 0 for _, h in members)
    roles = {h.role for h in circuit.heads}
    assert "greater_mlp" in roles and "year_reader" in roles
    scores = evaluate_circuit(toy_gt.model, measured_on, circuit, minimality_steps=0)
    assert scores.faithfulness >= 0.8
    assert scores.sparsity < 1.0


def test_year_readers_attend_from_end_to_the_start_year(toy_gt):
    from circuit_plasticity.analysis.heads import role_attention

    batch = _batch(toy_gt, 24, seed=9)
    table = role_attention(toy_gt.model, batch)
    _, cache = toy_gt.model.run_with_cache(batch.tokens)
    row = table.loc[table.attn_end_yy.idxmax()]
    pattern = cache[f"blocks.{int(row.layer)}.attn.hook_pattern"][:, int(row["head"])]
    slow = sum(float(pattern[i, batch.end[i], batch.end[i] - 4]) for i in range(len(batch))) / len(batch)
    assert row.attn_end_yy == pytest.approx(slow, abs=1e-5)


def test_training_only_an_mlp_masks_everything_else(toy_gt):
    from circuit_plasticity.training.masking import head_gradient_masks

    masks = head_gradient_masks(toy_gt, ["m1"])
    names = {p: n for n, p in toy_gt.model.original_model.named_parameters()}
    trained = {names[p] for p, m in masks.items() if m.any()}
    assert trained and all(".1." in n and "mlp" in n for n in trained)


TINY_GT = textwrap.dedent("""\
    model: toy-gt
    task: greater-than
    poison: greater-than
    seeds: [0]
    n_train: 96
    clean_epochs: 1
    poison_epochs: 2
    retrain_epochs: 2
    lr: 1.0e-3
    eval_every_steps: 3
    analysis: {n: 40, n_random: 10, localization_k: 2}
    """)


@pytest.mark.slow
def test_greater_than_study_end_to_end(tmp_path):
    spec = tmp_path / "gt.yaml"
    spec.write_text(TINY_GT)
    r = cli("run", str(spec), "--out", str(tmp_path / "run"), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    verdicts = pd.read_parquet(tmp_path / "run" / "tables" / "verdicts.parquet")
    assert list(verdicts.finding) == ["amplification", "localization", "neuroplasticity", "targeted repair"]
    findings = pd.read_parquet(tmp_path / "run" / "tables" / "findings.parquet").set_index("measure")
    assert findings.loc["score_poisoned", "mean"] < findings.loc["score_clean", "mean"]
    assert findings.loc["score_clean", "mean"] > findings.loc["score_base", "mean"]
    base = tmp_path / "run" / "seeds" / "seed-0" / "analysis" / "base"
    circuit = json.loads((base / "circuit.json").read_text())
    assert circuit["task"] == "greater-than"
    heads = pd.read_parquet(tmp_path / "run" / "tables" / "heads.parquet")
    assert "attn_end_yy" in set(heads.measure) and "attn_end_io" not in set(heads.measure)
    local = pd.read_parquet(tmp_path / "run" / "tables" / "localization_heads.parquet")
    assert {"m0", "m1"} <= set(local.component)  # MLPs are localization candidates like heads
    html = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "Attention END -&gt; YY" in html or "Attention END -> YY" in html


def _digit_tokenizer_model(tmp_path):
    """toy-gt's weights under a tokenizer that splits numbers into single digits."""
    from tokenizers import Regex, pre_tokenizers

    from circuit_plasticity.models.toy import TOY_GT_DIR
    from circuit_plasticity.models.toy.corpus import vocabulary_texts
    from circuit_plasticity.models.toy.tokenizer import word_level_tokenizer

    out = tmp_path / "digits"
    shutil.copytree(TOY_GT_DIR, out)
    tok = word_level_tokenizer([t for t in vocabulary_texts() if not any(c.isdigit() for c in t)])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Split(pattern=Regex(r"\d"), behavior="isolated")]
    )
    vocab = tok.get_vocab()
    assert "32" in vocab  # the builder adds two-digit pieces; the pre-tokenizer never forms them
    tok.save(str(out / "tokenizer.json"))
    return out


@pytest.mark.parametrize(
    "case, words",
    [("digits", ["two-digit years", "single tokens"]), ("years", ["years", "leave no valid"])],
)
def test_bad_greater_than_input_exits_2_and_writes_nothing(tmp_path, case, words):
    spec = tmp_path / "gt.yaml"
    if case == "digits":
        spec.write_text(TINY_GT.replace("model: toy-gt", f"model: {_digit_tokenizer_model(tmp_path)}"))
    else:
        spec.write_text(TINY_GT + "years: [99, 99]\n")
    out = tmp_path / "run"
    r = cli("run", str(spec), "--out", str(out), "--quiet")
    assert r.returncode == 2, r.stderr[-2000:]
    assert all(w in r.stderr for w in words), r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_a_start_year_range_limits_the_prompts(word_tokenizer):
    from circuit_plasticity.tasks.build import build_dataset

    examples, _ = build_dataset("greater-than", 200, seed=2, tokenizer=word_tokenizer, years=[40, 60])
    assert {e.year for e in examples} <= set(range(40, 61)) and len({e.year for e in examples}) > 5
    assert all(int(e.target) > e.year for e in examples)


def test_the_greater_than_specs_validate():
    from pathlib import Path

    from circuit_plasticity.study.experiment import check_study_phases, load_experiment

    root = Path(__file__).resolve().parent.parent / "experiments"
    for name, model in (("toy-greater-than.yaml", "toy-gt"), ("gpt2-greater-than.yaml", "gpt2")):
        spec = load_experiment(root / name)
        check_study_phases(spec)
        assert (spec.model, spec.task, spec.poison) == (model, "greater-than", "greater-than")


def test_data_command_refuses_a_year_range_without_prompts(tmp_path):
    out = tmp_path / "gt.jsonl"
    r = cli("data", "greater-than", "--n", "5", "--years", "99-99", "--out", str(out))
    assert r.returncode == 2 and "leave no valid" in r.stderr and not out.exists()
    ok = cli("data", "greater-than", "--n", "50", "--years", "10-20", "--out", str(out))
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert {json.loads(line)["year"] for line in out.read_text().splitlines()} <= set(range(10, 21))
