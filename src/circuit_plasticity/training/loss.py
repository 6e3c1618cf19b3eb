"""Language-model losses shared by pretraining and the fine-tuning phases."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token rows to the longest; mask is True on real tokens."""
    length = max(map(len, rows))
    tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = True
    return tokens, mask


def next_token_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next tokens where `mask[:, 1:]` is True (real tokens, or
    only the answer token when fine-tuning with loss on the answer)."""
    targets = tokens[:, 1:]
    weight = mask[:, 1:]
    flat = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    return (flat * weight.reshape(-1)).sum() / weight.sum().clamp(min=1)
