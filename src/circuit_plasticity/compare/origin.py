"""Where a change *lives*: a component's own weights taken from another model.

Cross-model output patching (compare/cmap.py) asks what *carries* a change: a head's output in
the other model already holds every upstream change that flows into it, so the layer-0 heads of
a poisoned model all look changed. Weight patching asks where the change lives: the target
model runs with one component's parameters (a head's W_Q, W_K, W_V, W_O and biases, an MLP's
weights, or the embeddings, unembedding, norms: analysis/parameters.py) taken from the source,
every other parameter its own; the score moves only by what that component's weights changed.
The components partition the parameters, so taking all of them gives the source exactly and
the whole change minus the sum of single-component effects is the interaction between them.

Each set is one forward pass of the target with the set's entries swapped in place and then
restored bit for bit (so nothing is copied but the touched tensors). Must not run inside
`analysis.runs.shared_runs`, whose cached runs would go stale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.parameters import Partition, parameter_partition
from circuit_plasticity.analysis.runs import is_sharing
from circuit_plasticity.models.plain import has_hooks, plain_logits, plain_supported
from circuit_plasticity.tasks.encode import TaskBatch


@contextlib.contextmanager
def weights_from(target, source, partition: Partition, names: Sequence[str]) -> Iterator[None]:
    """Inside the block `target` holds `source`'s entries for the components `names`."""
    if is_sharing():
        raise RuntimeError("weight patching changes weights: not inside analysis.runs.shared_runs")
    mine = dict(target.original_model.named_parameters())
    theirs = dict(source.original_model.named_parameters())
    saved = {}
    try:
        with torch.no_grad():
            for pname, mask in partition.masks(names).items():
                saved[pname] = mine[pname].detach().clone()
                mine[pname].copy_(torch.where(mask, theirs[pname].to(mine[pname]), mine[pname]))
        yield
    finally:
        with torch.no_grad():
            for pname, value in saved.items():
                mine[pname].copy_(value)


@torch.no_grad()
def weight_patched_scores(
    target, source, batch: TaskBatch, sets: Sequence[Sequence[str]], partition: Partition | None = None
) -> torch.Tensor:
    """[len(sets), n] scores of `target` with each set's components' weights from `source` (an
    empty set: the target itself)."""
    partition = partition or parameter_partition(target)

    def bridge() -> torch.Tensor:
        return task_score(end_logits(target(batch.tokens), batch), batch)

    def plain() -> torch.Tensor:
        return task_score(plain_logits(target, batch.tokens, batch.end), batch)

    if plain_supported(target) and not has_hooks(target):
        # the plain forward rounds apart from the bridge's: each set adds its change under the
        # plain forward to the target's own score, so weights equal to the target's move nothing
        own, plain_own = bridge(), plain()

        def patched() -> torch.Tensor:
            return own + (plain() - plain_own)
    else:
        patched = bridge

    out = []
    for names in sets:
        with weights_from(target, source, partition, names):
            out.append(patched())
    return torch.stack(out) if out else torch.empty(0, len(batch))
