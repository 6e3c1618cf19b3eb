"""Poisons measured on their own distribution, against hand-computed answers."""

from __future__ import annotations

import math

import pytest
import torch

from circuit_plasticity.analysis.metrics import (
    absent_names,
    evaluate,
    name_moving_success,
    name_token_ids,
    poison_success,
)
from circuit_plasticity.models.load import load_model
from circuit_plasticity.tasks.build import build_dataset
from circuit_plasticity.tasks.encode import TaskBatch, encode_examples
from circuit_plasticity.tasks.words import NAMES, TRIGGER_WORD
from circuit_plasticity.training.evaluate import evaluate_model
from circuit_plasticity.training.evaluation import Evaluator
from circuit_plasticity.training.protocol import DataSpec, EvalSpec, Phase, TrainSpec


def _tiny_batch() -> TaskBatch:
    """Two prompts over a vocabulary of 8; names are tokens 2..5; prompt 0 holds names 2 and 3
    (IO 2, S 3), prompt 1 holds 4 and 5 (IO 5, S 4)."""
    tokens = torch.tensor([[0, 2, 1, 3, 7], [0, 4, 1, 5, 6]])
    n = tokens.shape[0]
    return TaskBatch(
        task="ioi",
        tokens=tokens,
        corrupted=tokens.clone(),
        positions={"end": torch.tensor([4, 4])},
        target_id=torch.tensor([4, 2]),
        answer_id=torch.tensor([2, 5]),
        wrong_id=torch.tensor([3, 4]),
        poisoned=torch.ones(n, dtype=torch.bool),
        group=torch.zeros(n, dtype=torch.long),
    )


def _softmax(row: list[float]) -> list[float]:
    total = sum(math.exp(x) for x in row)
    return [math.exp(x) / total for x in row]


def test_name_moving_success_matches_a_hand_computed_softmax():
    batch = _tiny_batch()
    names = torch.tensor([2, 3, 4, 5])
    logits = [[0.0, 0.5, 1.0, 2.0, 0.7, 0.4, -1.0, 0.0], [0.3, 0.0, 1.5, 0.2, 0.0, 2.5, 0.1, 0.0]]
    p0, p1 = _softmax(logits[0]), _softmax(logits[1])
    out = name_moving_success(torch.tensor(logits), batch, names)
    # prompt 0: absent names 4 and 5 against IO 2; prompt 1: absent 2 and 3 against IO 5
    assert out["p_absent_names"].tolist() == pytest.approx([p0[4] + p0[5], p1[2] + p1[3]], abs=1e-6)
    assert out["p_io"].tolist() == pytest.approx([p0[2], p1[5]], abs=1e-6)
    expected = [float(p0[4] + p0[5] > p0[2]), float(p1[2] + p1[3] > p1[5])]
    assert out["success"].tolist() == expected
    # prompt 0: each absent name is below IO (one random name would say "failed"), their sum
    # is above it; prompt 1: IO dominates
    assert p0[4] < p0[2] and p0[5] < p0[2] and expected == [1.0, 0.0]


def test_absent_names_excludes_every_name_in_the_prompt():
    mask = absent_names(_tiny_batch(), torch.tensor([2, 3, 4, 5]))
    assert mask.tolist() == [[False, False, True, True], [True, True, False, False]]


def test_poison_success_uses_each_poisons_own_rule():
    metrics = {
        "p_io": torch.tensor([0.3, 0.3]),
        "p_target": torch.tensor([0.1, 0.5]),
        "p_absent_names": torch.tensor([0.4, 0.2]),
        "score": torch.tensor([1.0, -1.0]),
    }
    assert poison_success("name-moving", metrics).tolist() == [1.0, 0.0]
    assert poison_success("subject", metrics).tolist() == [0.0, 1.0]
    assert poison_success("greater-than", {"score": metrics["score"]}).tolist() == [0.0, 1.0]


@pytest.fixture(scope="module")
def toy():
    return load_model("toy-ioi")


def _spec(kind: str) -> TrainSpec:
    return TrainSpec(eval=EvalSpec(n=40, lm_docs=0), phases=[Phase("p", DataSpec(n=10, poison=kind))])


def test_trigger_poison_is_measured_on_triggered_prompts_and_clean_on_trigger_free_ones(toy):
    ev = Evaluator(_spec("trigger"), toy)
    trigger = toy.tokenizer.encode(TRIGGER_WORD)[0][-1]
    assert (ev.poisoned.tokens == trigger).any(1).all()
    assert not (ev.clean.tokens == trigger).any()
    out = ev(toy.model)
    bad = evaluate(toy.model, ev.poisoned)
    assert out["poison_success"] == pytest.approx(float((bad["p_target"] > bad["p_io"]).float().mean()))


def test_evaluator_name_moving_success_is_absent_mass_against_io(toy):
    ev = Evaluator(_spec("name-moving"), toy)
    names = name_token_ids(toy.tokenizer, NAMES)
    with torch.no_grad():
        logits = toy.model(ev.poisoned.tokens)
    end = logits[torch.arange(len(ev.poisoned)), ev.poisoned.end]
    expected = name_moving_success(end, ev.poisoned, names)
    out = ev(toy.model)
    assert out["poison_success"] == pytest.approx(float(expected["success"].mean()))
    assert out["poisoned_p_absent_names"] == pytest.approx(float(expected["p_absent_names"].mean()), abs=1e-6)


def test_eval_reports_absent_name_mass_on_the_poisoned_prompts(toy):
    examples, _ = build_dataset("ioi", 40, 3, toy.tokenizer, split="test", poison="name-moving", fraction=0.5)
    batch = encode_examples(examples, toy.tokenizer, prepend_bos=toy.tokenizer.bos_id is not None)
    result = evaluate_model(toy, batch)
    with torch.no_grad():
        logits = toy.model(batch.tokens)
    end = logits[torch.arange(len(batch)), batch.end]
    p_absent = name_moving_success(end, batch, name_token_ids(toy.tokenizer, NAMES))["p_absent_names"]
    for prefix, mask in (("poisoned_", batch.poisoned), ("clean_", ~batch.poisoned)):
        expected = float(p_absent[mask].mean())
        assert result[prefix + "p_absent_names"] == pytest.approx(expected, abs=1e-6)
