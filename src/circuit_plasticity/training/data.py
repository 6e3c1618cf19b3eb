"""Task examples -> training tensors: prompt + answer token, with a loss mask."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from circuit_plasticity.tasks.encode import TaskBatch


@dataclass
class TrainTensors:
    tokens: torch.Tensor  # [n, seq + 1]: the prompt, then its target token after END
    loss_mask: torch.Tensor  # [n, seq + 1] True where the token is a prediction target

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def train_tensors(batch: TaskBatch, pad_id: int, loss: str = "answer") -> TrainTensors:
    n, seq = batch.tokens.shape
    device = batch.tokens.device
    tokens = torch.cat([batch.tokens, torch.full((n, 1), pad_id, dtype=torch.long, device=device)], dim=1)
    rows = torch.arange(n, device=device)
    answer_pos = batch.end + 1
    tokens[rows, answer_pos] = batch.target_id
    mask = torch.zeros_like(tokens, dtype=torch.bool)
    if loss == "answer":
        mask[rows, answer_pos] = True
    else:  # every real token after the first (BOS) is a target
        mask = torch.arange(seq + 1, device=device)[None, :] <= answer_pos[:, None]
        mask[:, 0] = False
    return TrainTensors(tokens, mask)
