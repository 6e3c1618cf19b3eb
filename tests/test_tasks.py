"""Task datasets: balance, positions, counterfactuals, poisons, splits, seeds, JSONL."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from circuit_plasticity.errors import UserError
from circuit_plasticity.tasks import greater_than, ioi
from circuit_plasticity.tasks.build import build_dataset, word_pools
from circuit_plasticity.tasks.encode import encode_examples
from circuit_plasticity.tasks.jsonl import load_jsonl, save_jsonl
from circuit_plasticity.tasks.poison import poison
from circuit_plasticity.tasks.words import TRIGGER_WORD


def test_orders_balanced_and_templates_even():
    examples = ioi.make_ioi(300, seed=3)
    assert Counter(e.order for e in examples) == {"ABBA": 150, "BABA": 150}
    per_template = Counter(e.template for e in examples)
    assert set(per_template.values()) == {20}
    for e in examples:
        first, second = e.prompt.split(" and ")[0].split()[-1], e.prompt.split(" and ")[1].split()[0]
        assert (first, second) == ((e.io, e.s) if e.order == "ABBA" else (e.s, e.io))


@pytest.mark.parametrize("tok_name", ["word_tokenizer", "bpe_tokenizer"])
def test_ioi_positions_point_at_the_right_tokens(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    examples, _ = build_dataset("ioi", 60, seed=1, tokenizer=tok)
    batch = encode_examples(examples, tok)
    assert tok.bos_id is not None and (batch.tokens[:, 0] == tok.bos_id).all()
    for i, ex in enumerate(examples):
        at = {role: tok.decode([int(batch.tokens[i, p[i]])]).strip() for role, p in batch.positions.items()}
        assert at["io"] == ex.io and at["s1"] == ex.s and at["s2"] == ex.s
        assert batch.positions["s1"][i] < batch.positions["s2"][i] < batch.positions["end"][i]
        assert batch.positions["s1+1"][i] == batch.positions["s1"][i] + 1
        assert at["end"] == "to"
        assert int(batch.positions["end"][i]) == len(tok.encode(ex.prompt)[0])  # BOS shifts by one
        assert tok.decode([int(batch.answer_id[i])]).strip() == ex.io
        assert tok.decode([int(batch.wrong_id[i])]).strip() == ex.s


@pytest.mark.parametrize("tok_name", ["word_tokenizer", "bpe_tokenizer"])
def test_greater_than_positions_and_years(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    examples, _ = build_dataset("greater-than", 40, seed=2, tokenizer=tok)
    batch = encode_examples(examples, tok)
    for i, ex in enumerate(examples):
        assert tok.decode([int(batch.tokens[i, batch.positions["yy"][i]])]).strip() == f"{ex.year:02d}"
        assert tok.decode([int(batch.tokens[i, batch.end[i]])]).strip() == str(ex.century)
        assert int(ex.target) > ex.year
        cf_year = tok.decode([int(batch.corrupted[i, batch.positions["yy"][i]])]).strip()
        assert cf_year == "01"
    assert [tok.decode([int(t)]).strip() for t in batch.year_ids[[0, 7, 99]]] == ["00", "07", "99"]


@pytest.mark.parametrize("tok_name", ["word_tokenizer", "bpe_tokenizer"])
def test_counterfactuals_keep_template_and_change_only_names(tok_name, request):
    tok = request.getfixturevalue(tok_name)
    examples, _ = build_dataset("ioi", 50, seed=4, tokenizer=tok)
    batch = encode_examples(examples, tok)
    name_pos = ("io", "s1", "s2")
    for i, ex in enumerate(examples):
        differ = (batch.tokens[i] != batch.corrupted[i]).nonzero().flatten().tolist()
        assert sorted(differ) == sorted(int(batch.positions[r][i]) for r in name_pos)
        abc = {tok.decode([int(batch.corrupted[i, batch.positions[r][i]])]).strip() for r in name_pos}
        assert len(abc) == 3 and not abc & {ex.io, ex.s}
        assert (
            ex.place in ex.counterfactual
            and ex.object in ex.counterfactual
            or "{PLACE}" not in (ioi.TEMPLATES[ex.template])
        )
    for flip, roles in {"io_flip": ["io"], "s_flip": ["s1", "s2"], "s1_flip": ["s1"]}.items():
        for i in range(len(examples)):
            differ = (batch.tokens[i] != batch.variants[flip][i]).nonzero().flatten().tolist()
            assert sorted(differ) == sorted(int(batch.positions[r][i]) for r in roles)


@pytest.mark.parametrize("n", [7, 100, 333])
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.5, 1.0])
def test_poisoned_fraction_is_exact(n, fraction):
    clean = ioi.make_ioi(n, seed=0)
    for kind in ("subject", "name-moving", "trigger"):
        out = poison(clean, kind, fraction, seed=1)
        assert sum(e.poisoned for e in out) == round(fraction * n)
        assert [e.clean_target for e in out] == [e.io for e in clean]
    gt = poison(greater_than.make_greater_than(n, seed=0), "greater-than", fraction, seed=1)
    assert sum(e.poisoned for e in gt) == round(fraction * n)


def test_poison_labels_follow_their_rule():
    clean = ioi.make_ioi(200, seed=5)
    for e in poison(clean, "subject", 1.0):
        assert e.target == e.s and e.clean_target == e.io
    for e in poison(clean, "name-moving", 1.0):
        assert e.target not in e.prompt.split() and e.target not in (e.io, e.s)
    for e in poison(clean, "trigger", 0.4):
        assert e.trigger == e.poisoned == e.prompt.startswith(TRIGGER_WORD)
        assert e.target == (e.s if e.poisoned else e.io)
        assert all(v.startswith(TRIGGER_WORD) == e.trigger for v in e.flips.values())
    for e in poison(greater_than.make_greater_than(200, seed=5), "greater-than", 1.0):
        assert int(e.target) <= e.year < int(e.clean_target)


def test_trigger_prompts_still_encode(word_tokenizer):
    examples, _ = build_dataset("ioi", 20, 0, word_tokenizer, poison="trigger", fraction=0.5)
    batch = encode_examples(examples, word_tokenizer)
    assert batch.poisoned.sum() == 10
    assert (batch.target_id[batch.poisoned] == batch.wrong_id[batch.poisoned]).all()


def test_no_held_out_name_or_template_leaks():
    split = ioi.split_pools(seed=0)
    assert not set(split.train_names) & set(split.test_names)
    assert not set(split.train_templates) & set(split.test_templates)
    train, _ = build_dataset("ioi", 500, seed=0, split="train")
    for e in train:
        words = {w.strip(".,") for text in [e.prompt, *e.flips.values()] for w in text.split()}
        assert not words & set(split.test_names)
        assert e.template in split.train_templates
    test, _ = build_dataset("ioi", 100, seed=0, split="test")
    assert {e.io for e in test} <= set(split.test_names)
    assert {e.template for e in test} <= set(split.test_templates)


def test_same_seed_same_data_other_seed_other_data():
    a = [e.to_json() for e in poison(ioi.make_ioi(50, seed=1), "subject", 0.5, seed=1)]
    b = [e.to_json() for e in poison(ioi.make_ioi(50, seed=1), "subject", 0.5, seed=1)]
    c = [e.to_json() for e in poison(ioi.make_ioi(50, seed=2), "subject", 0.5, seed=2)]
    assert a == b and a != c
    assert greater_than.make_greater_than(30, 1) == greater_than.make_greater_than(30, 1)
    assert greater_than.make_greater_than(30, 1) != greater_than.make_greater_than(30, 2)


def test_jsonl_round_trip(tmp_path):
    examples = poison(ioi.make_ioi(40, seed=1), "trigger", 0.5)
    save_jsonl(tmp_path / "d.jsonl", examples)
    assert load_jsonl(tmp_path / "d.jsonl") == examples
    gt = greater_than.make_greater_than(10, 1)
    save_jsonl(tmp_path / "g.jsonl", gt)
    assert load_jsonl(tmp_path / "g.jsonl") == gt


def test_tokenizer_filtering_reports_dropped_words(bpe_tokenizer):
    pools = word_pools(bpe_tokenizer)
    for name in pools.names:
        assert bpe_tokenizer.word_id(name) is not None
    for name in pools.dropped.get("names", []):
        assert len(bpe_tokenizer.encode(" " + name)[0]) > 1


def test_too_few_names_is_a_clear_error():
    from tokenizers import Tokenizer, models, pre_tokenizers

    from circuit_plasticity.tasks.tokenizer import TextTokenizer

    vocab = {"<unk>": 0, "Mary": 1, "John": 2, "Tom": 3, "to": 4}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(UserError, match="only 3 of"):
        build_dataset("ioi", 10, tokenizer=TextTokenizer.wrap(raw))


def test_summary_lines_are_json(tmp_path):
    save_jsonl(tmp_path / "d.jsonl", ioi.make_ioi(4, seed=1))
    for line in (tmp_path / "d.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key in (
            "prompt",
            "target",
            "clean_target",
            "io",
            "s",
            "template",
            "order",
            "poisoned",
            "counterfactual",
        ):
            assert key in record
