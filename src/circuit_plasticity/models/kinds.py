"""Which Hugging Face models the tool can study, decided from the config before any weights load.

The analyses read logits at the last position of a left-to-right model: encoder-only models
(BERT: bidirectional, no next-token logits) and sequence-to-sequence models (T5: the prompt goes
to an encoder) have no such reading, even where transformers or TransformerLens would load
them, so they are refused with a message that names their architecture.
"""

from __future__ import annotations

import re
from typing import Any

from circuit_plasticity.errors import UserError

SUPPORTED = (
    "decoder-only causal language models (GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2, Gemma-2, ...)"
)
ENCODER_ONLY_TYPES = {
    "albert",
    "bert",
    "camembert",
    "deberta",
    "deberta-v2",
    "distilbert",
    "electra",
    "ernie",
    "esm",
    "modernbert",
    "mpnet",
    "roberta",
    "xlm-roberta",
}
ENCODER_HEADS = re.compile(
    r"For(MaskedLM|SequenceClassification|TokenClassification|QuestionAnswering|MultipleChoice)$"
)


def describe(config: Any) -> str:
    """'BertForMaskedLM (model type bert)': how messages name an architecture."""
    archs = ", ".join(getattr(config, "architectures", None) or []) or "no architectures listed"
    return f"{archs} (model type {getattr(config, 'model_type', '?')})"


def check_causal_decoder(name: str, config: Any) -> None:
    """Raise a UserError unless `config` describes a decoder-only causal language model."""
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(
            f"{name} is a sequence-to-sequence (encoder-decoder) model, {describe(config)}; "
            f"circuit-plasticity studies {SUPPORTED}"
        )
    archs = getattr(config, "architectures", None) or []
    if getattr(config, "model_type", "") in ENCODER_ONLY_TYPES or any(ENCODER_HEADS.search(a) for a in archs):
        raise UserError(
            f"{name} is an encoder-only model, {describe(config)}; circuit-plasticity studies {SUPPORTED}"
        )
