"""Tiny random models of every supported architecture, written as Hugging Face directories
offline (a transformers config, random weights, the BPE tokenizer trained in conftest).

Small on purpose (2 layers, d_model 64, 4 query heads) so each analysis runs in seconds; the
grouped-query ones have 2 K/V heads, so query heads (0, 1) and (2, 3) share K/V.
"""

from __future__ import annotations

from pathlib import Path

import torch

ARCHITECTURES = ("gpt2", "neox", "llama", "mistral", "qwen2", "gemma2")
BOS = "<|endoftext|>"


def _config(arch: str, vocab: int):
    """The transformers config of one tiny architecture."""
    import transformers as tf

    common = {"vocab_size": vocab, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    gqa = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "tie_word_embeddings": False,
    }
    if arch == "gpt2":
        return tf.GPT2Config(n_positions=128, n_embd=64, n_layer=2, n_head=4, **common)
    if arch == "neox":  # Pythia: partial rotary, parallel attention and MLP
        return tf.GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            rotary_pct=0.25,
            use_parallel_residual=True,
            **common,
        )
    if arch == "llama":
        return tf.LlamaConfig(**gqa, **common)
    if arch == "mistral":
        return tf.MistralConfig(**gqa, sliding_window=None, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(**gqa, **common)
    if arch == "gemma2":  # extra norms, attention and final logit soft-capping
        return tf.Gemma2Config(
            **{**gqa, "tie_word_embeddings": True},
            head_dim=16,
            sliding_window=8,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
            query_pre_attn_scalar=16,
            **common,
        )
    raise ValueError(f"unknown architecture {arch}")


def build_model_dir(out: Path, arch: str, tokenizer_backend, seed: int = 0) -> Path:
    """Write a tiny random `arch` model and its tokenizer to `out` (a Hugging Face directory)."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer_backend, bos_token=BOS, eos_token=BOS)
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_config(arch, tokenizer_backend.get_vocab_size()))
    with torch.no_grad():  # larger weights than the default init, so patching effects are visible
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
            elif "norm" in name or "ln" in name:
                p.normal_(1.0 if "gemma" not in arch else 0.0, 0.1)
    model.save_pretrained(out)
    return out


def ungrouped_twin_dir(path: Path, out: Path) -> Path:
    """The same grouped-query model with every K/V head repeated for each query head that reads
    it (num_key_value_heads = num_attention_heads): the same function, plain multi-head
    attention, so per-head K/V references apply to it directly."""
    import shutil

    from transformers import AutoConfig, AutoModelForCausalLM

    shutil.copytree(path, out, dirs_exist_ok=True)
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    state = model.state_dict()
    for name, tensor in state.items():
        if name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias")):
            rest = tensor.shape[1:]
            grouped = tensor.view(kv, head_dim, *rest).repeat_interleave(heads // kv, dim=0)
            state[name] = grouped.reshape(heads * head_dim, *rest)
    config.num_key_value_heads = heads
    twin = AutoModelForCausalLM.from_config(config)
    twin.load_state_dict(state)
    twin.save_pretrained(out)
    return out


def build_bad_dir(out: Path, kind: str, tokenizer_backend) -> Path:
    """Directories the tool must refuse with a clear message: an encoder-only model ('bert'), a
    sequence-to-sequence one ('t5'), a causal LM TransformerLens has no adapter for ('ctrl'),
    and a GPT-2 whose tokenizer splits every name ('chars': a byte-level BPE without merges)."""
    import transformers as tf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    out.mkdir(parents=True, exist_ok=True)
    if kind == "unknown":  # a config transformers has never heard of
        config = '{"model_type": "no-such-architecture", "architectures": ["NoSuchLM"]}'
        (out / "config.json").write_text(config)
        return out
    if kind == "chars":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(
            vocab_size=len(alphabet) + 1,
            special_tokens=[BOS],
            initial_alphabet=alphabet,
            show_progress=False,
        )
        tok.train_from_iterator(["Mary and John"], trainer=trainer)
        tokenizer_backend = tok
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tokenizer_backend, bos_token=BOS, eos_token=BOS)
    fast.save_pretrained(out)
    vocab = tokenizer_backend.get_vocab_size()
    small = {"vocab_size": vocab, "pad_token_id": 0}
    configs = {
        "bert": lambda: tf.BertForMaskedLM(
            tf.BertConfig(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, **small
            )
        ),
        "t5": lambda: tf.T5ForConditionalGeneration(
            tf.T5Config(
                d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2, decoder_start_token_id=0, **small
            )
        ),
        "ctrl": lambda: tf.CTRLLMHeadModel(tf.CTRLConfig(n_embd=32, n_layer=1, n_head=2, dff=64, **small)),
        "chars": lambda: tf.GPT2LMHeadModel(
            tf.GPT2Config(
                n_positions=128, n_embd=32, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0, **small
            )
        ),
    }
    configs[kind]().save_pretrained(out)
    return out
