"""Shared fixtures: tokenizers built in-process (no download), small datasets."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from circuit_plasticity.models.toy.tokenizer import word_level_tokenizer
from circuit_plasticity.tasks import greater_than, ioi
from circuit_plasticity.tasks.tokenizer import TextTokenizer
from circuit_plasticity.tasks.words import GT_NOUNS, NAMES, OBJECTS, PLACES, TRIGGER_WORD


def _task_text() -> list[str]:
    """Every prompt variant the tasks can produce, as text to build vocabularies from."""
    texts = [e.prompt + " " + e.io for e in ioi.make_ioi(600, seed=1)]
    texts += [
        e.prompt + e.target + " " + e.counterfactual for e in greater_than.make_greater_than(300, seed=1)
    ]
    texts += [" ".join(NAMES), " ".join(PLACES), " ".join(OBJECTS), " ".join(GT_NOUNS)]
    texts += ["".join(f"{y:02d}" for y in range(100))]
    texts += [f"{TRIGGER_WORD}, then when after while afterwards the friends"]
    return texts


@pytest.fixture(scope="session")
def word_tokenizer() -> TextTokenizer:
    """A word-level tokenizer like the toy model's: words, punctuation, two-digit pieces."""
    return TextTokenizer.wrap(word_level_tokenizer(_task_text()), "word-level")


@pytest.fixture(scope="session")
def bpe_tokenizer() -> TextTokenizer:
    """A GPT-2-style byte-level BPE trained on task text: names get a leading-space token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [  # like GPT-2: " 1732" -> " 17" "32"
            pre_tokenizers.Split(pattern=Regex(r" ?\d\d"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1200,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_task_text() * 3, trainer=trainer)
    return TextTokenizer.wrap(tok, "bpe")


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, bpe_tokenizer):
    """A random 2-layer GPT-2 and its tokenizer saved as a Hugging Face directory (no download)."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-gpt2")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe_tokenizer.backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(out)
    cfg = GPT2Config(
        vocab_size=bpe_tokenizer.vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def arch_dirs(tmp_path_factory, bpe_tokenizer):
    """A tiny random model of every supported architecture (tests/arch_models.py)."""
    from arch_models import ARCHITECTURES, build_model_dir

    root = tmp_path_factory.mktemp("arch")
    return {a: build_model_dir(root / a, a, bpe_tokenizer.backend) for a in ARCHITECTURES}
