"""What is measured during training: held-out clean and poisoned IOI, and general text.

Each poison is measured on its own distribution: `clean_*` on the held-out prompts as built
(never carrying the trigger), `poison_success` on the same prompts poisoned in full (for the
trigger poison: every prompt carries the trigger). The name-moving poison succeeds when the
probability mass on all names absent from the prompt beats P(IO) (`metrics.poison_success`).

Built once per run, so every evaluation of every phase sees the same prompts. The held-out
prompts use names and templates that the fine-tuning data never contains; the general-text
loss (simple English from the toy corpus, which any tokenizer can read) shows collateral damage.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from circuit_plasticity.analysis.metrics import (
    end_logits_in_chunks,
    name_token_ids,
    per_prompt,
    poison_success,
)
from circuit_plasticity.models.load import LoadedModel
from circuit_plasticity.models.plain import logits
from circuit_plasticity.tasks.build import build_dataset
from circuit_plasticity.tasks.encode import encode_examples
from circuit_plasticity.tasks.poison import poison
from circuit_plasticity.tasks.words import NAMES
from circuit_plasticity.training.loss import next_token_loss, pad_batch
from circuit_plasticity.training.protocol import TrainSpec


def protocol_poison(spec: TrainSpec) -> str:
    kinds = [p.data.poison for p in spec.phases if p.data.poison]
    return kinds[0] if kinds else ("subject" if spec.task == "ioi" else "greater-than")


class Evaluator:
    def __init__(self, spec: TrainSpec, loaded: LoadedModel):
        from circuit_plasticity.models.toy.corpus import documents

        tok = loaded.tokenizer
        bos = tok.bos_id is not None
        examples, _ = build_dataset(
            spec.task,
            spec.eval.n,
            seed=10_000 + spec.seed,
            tokenizer=tok,
            split="test",
            years=spec.years,
        )
        device = loaded.device
        self.clean = encode_examples(examples, tok, prepend_bos=bos).to(device)
        self.kind = protocol_poison(spec)
        self.poisoned = encode_examples(
            poison(examples, self.kind, 1.0, seed=spec.seed), tok, prepend_bos=bos
        ).to(device)
        self.name_ids = name_token_ids(tok, NAMES).to(device) if self.kind == "name-moving" else None
        # label poisons keep the prompts: one forward pass then serves both measurements
        self.same_prompts = torch.equal(self.clean.tokens, self.poisoned.tokens)
        stream = documents(seed=777_000 + spec.seed)
        n_ctx = int(loaded.model.cfg.n_ctx)  # a document longer than the context is cut
        rows = [
            (([tok.bos_id] if bos else []) + tok.encode(next(stream))[0])[:n_ctx]
            for _ in range(spec.eval.lm_docs)
        ]
        self.lm = tuple(t.to(device) for t in pad_batch(rows, tok.pad_id)) if rows else None

    @torch.no_grad()
    def __call__(self, model) -> dict[str, Any]:
        forward = functools.partial(logits, model)  # (tokens, end) -> END logits
        end = end_logits_in_chunks(forward, self.clean)
        clean = per_prompt(end, self.clean)
        if not self.same_prompts:
            end = end_logits_in_chunks(forward, self.poisoned)
        bad = per_prompt(end, self.poisoned, self.name_ids)
        out = {
            "clean_score": float(clean["score"].mean()),
            "clean_accuracy": float(clean["correct"].mean()),
            "clean_top1": float(clean["top1"].mean()),
            "poison_success": float(poison_success(self.kind, bad).mean()),
            "poisoned_p_target": float(bad["p_target"].mean()),
        }
        for key in ("p_io", "p_absent_names"):
            if key in bad:
                out[f"poisoned_{key}"] = float(bad[key].mean())
        if "p_io" in clean:
            out |= {"clean_p_io": float(clean["p_io"].mean()), "clean_p_s": float(clean["p_s"].mean())}
        if self.lm is not None:
            tokens, mask = self.lm
            out["lm_loss"] = float(next_token_loss(logits(model, tokens), tokens, mask))
        return out
