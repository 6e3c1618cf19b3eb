"""The patching engine, written once. Activation patching, knockout, path patching and
cross-model patching are all uses of it.

`patch_each_head` stacks the prompts once per head along the batch dimension and, in one
forward pass, replaces a different head's output (hook_z) in each copy with a given
replacement (a corrupted run's, a mean, another model's). No Python loop of one forward pass
per head.

`path_patch` (Wang et al. 2022) lets a sender's corrupted output reach only chosen
receivers: the logits directly, or the query/key/value of chosen heads at chosen positions,
with every other head frozen at its clean output. Batched the same way: one frozen pass for all
senders, then one pass that patches the receivers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from circuit_plasticity.analysis import fastpath
from circuit_plasticity.analysis.hooks import (
    head_labels,
    kv_head,
    mlp_labels,
    mlp_name,
    n_kv_heads,
    n_layers_heads,
    run_cached,
    z_name,
)
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.runs import reuse
from circuit_plasticity.tasks.encode import TaskBatch

Head = tuple[int, int]
RECEIVER_INPUTS = ("q", "k", "v")


def repeat_batch(batch: TaskBatch, k: int) -> TaskBatch:
    """`batch` stacked k times (tokens, positions and answers), for batched patching."""
    return TaskBatch(
        task=batch.task,
        tokens=batch.tokens.repeat(k, 1),
        corrupted=batch.corrupted.repeat(k, 1),
        positions={r: p.repeat(k) for r, p in batch.positions.items()},
        target_id=batch.target_id.repeat(k),
        answer_id=batch.answer_id.repeat(k),
        wrong_id=batch.wrong_id.repeat(k),
        poisoned=batch.poisoned.repeat(k),
        group=batch.group.repeat(k),
        year=None if batch.year is None else batch.year.repeat(k),
        year_ids=batch.year_ids,
        metric=batch.metric,
    )


def z_cache(model, tokens: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per-layer hook_z of one forward pass."""
    return activation_cache(model, tokens, "z")


def output_cache(model, tokens: torch.Tensor) -> dict[int | str, torch.Tensor]:
    """Every component's output of one pass: hook_z per layer (int keys) and, with MLPs, each
    MLP's output under `mlp_name(layer)`: what cross-model output patching takes from a model."""
    n_layers, _ = n_layers_heads(model)
    names = [z_name(lay) for lay in range(n_layers)] + [mlp_name(lay) for lay, _ in mlp_labels(model)]
    _, cache = run_cached(model, tokens, names)
    out: dict[int | str, torch.Tensor] = {lay: cache[z_name(lay)] for lay in range(n_layers)}
    return out | {name: cache[name] for name in names[n_layers:]}


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


ACTIVATIONS = {"z": "attn.hook_z", "pattern": "attn.hook_pattern"}


def activation_name(layer: int, activation: str) -> str:
    return f"blocks.{layer}.{ACTIVATIONS[activation]}"


def activation_cache(model, tokens: torch.Tensor, activation: str = "z") -> dict[int, torch.Tensor]:
    """Per-layer hook_z ([n, seq, heads, d_head]) or hook_pattern ([n, heads, q, k]); one pass,
    shared by the analyses of one batch (analysis.runs). Read-only: patch copies of it."""

    def run() -> dict[int, torch.Tensor]:
        n_layers, _ = n_layers_heads(model)
        names = [activation_name(lay, activation) for lay in range(n_layers)]
        _, cache = run_cached(model, tokens, names)
        return {lay: cache[name] for lay, name in enumerate(names)}

    return reuse(f"activations:{activation}", model, (tokens,), run)


def _replace_head(
    act: torch.Tensor, source: torch.Tensor, head: int, positions: torch.Tensor | None, activation: str
) -> None:
    """In place: act[:, head] <- source[:, head] (z: head axis 2; pattern: axis 1, query rows)."""
    rows = torch.arange(act.shape[0], device=act.device)
    if activation == "z":
        if positions is None:
            act[:, :, head] = source[:, :, head]
        else:
            act[rows, positions, head] = source[rows, positions, head]
    elif positions is None:
        act[:, head] = source[:, head]
    else:
        act[rows, head, positions] = source[rows, head, positions]


def _replace_mlp(act: torch.Tensor, source: torch.Tensor, positions: torch.Tensor | None) -> None:
    """In place: an MLP's output [n, seq, d_model] <- source (at one position per prompt)."""
    if positions is None:
        act[:] = source
    else:
        rows = torch.arange(act.shape[0], device=act.device)
        act[rows, positions] = source[rows, positions]


@torch.no_grad()
def patch_each_head(
    model,
    batch: TaskBatch,
    tokens: torch.Tensor,
    replacement: dict[int, torch.Tensor],
    heads: Sequence[Head] | None = None,
    positions: torch.Tensor | None = None,
    heads_per_pass: int = 16,
    activation: str = "z",
) -> torch.Tensor:
    """[len(heads), n] per-prompt scores of running `tokens` with one head's activation replaced.

    `activation` is "z" (the head's output) or "pattern" (its attention pattern);
    `positions` ([n] indices) restricts the replacement to one (query) position per prompt,
    None replaces it at every position.
    """
    heads = list(heads if heads is not None else head_labels(model))
    return patch_each_set(
        model, batch, tokens, replacement, [[h] for h in heads], positions, heads_per_pass, activation
    )


@torch.no_grad()
def patch_each_set(
    model,
    batch: TaskBatch,
    tokens: torch.Tensor,
    replacement: dict[int, torch.Tensor],
    head_sets: Sequence[Sequence[Head]],
    positions: torch.Tensor | None = None,
    sets_per_pass: int = 16,
    activation: str = "z",
) -> torch.Tensor:
    """[len(head_sets), n]: like `patch_each_head`, but each copy patches a whole set of heads
    jointly (matched random controls, circuits). A member (layer, -1) is that layer's MLP: its
    output is replaced by `replacement[mlp_name(layer)]` (z patching only)."""
    has_mlp = any(h < 0 for members in head_sets for _, h in members)
    if has_mlp and activation != "z":
        raise ValueError("MLP members can only be patched with activation 'z' (their output)")
    if activation == "z" and fastpath.supported(model):
        patcher = reuse(
            "fast_patcher", model, (tokens, batch.end), lambda: fastpath.FastPatcher(model, tokens, batch.end)
        )

        def score(end_logits: torch.Tensor, k: int) -> torch.Tensor:
            return task_score(end_logits, repeat_batch(batch, k))

        return patcher.scores([list(s) for s in head_sets], replacement, positions, score, sets_per_pass)
    return _patch_each_set_hooked(
        model, batch, tokens, replacement, head_sets, positions, sets_per_pass, activation
    )


def _patch_each_set_hooked(
    model, batch, tokens, replacement, head_sets, positions, sets_per_pass, activation
) -> torch.Tensor:
    """The general path: every copy runs the whole model with hooks (any architecture)."""
    n = tokens.shape[0]
    out = []
    for chunk in _chunks([list(s) for s in head_sets], sets_per_pass):
        k = len(chunk)

        def hook_for(layer: int, mlp: bool, chunk=chunk, k=k):
            def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
                act = act.clone().view(k, n, *act.shape[1:])
                for copy, members in enumerate(chunk):
                    for lay, head in members:
                        if lay != layer or (head < 0) != mlp:
                            continue
                        if mlp:
                            _replace_mlp(act[copy], replacement[mlp_name(layer)], positions)
                        else:
                            _replace_head(act[copy], replacement[layer], head, positions, activation)
                return act.view(k * n, *act.shape[2:])

            return hook

        layers = sorted({lay for members in chunk for lay, h in members if h >= 0})
        hooks = [(activation_name(lay, activation), hook_for(lay, False)) for lay in layers]
        mlps = sorted({lay for members in chunk for lay, h in members if h < 0})
        hooks += [(mlp_name(lay), hook_for(lay, True)) for lay in mlps]
        logits = model.run_with_hooks(tokens.repeat(k, 1), fwd_hooks=hooks)
        rep = repeat_batch(batch, k)
        scored = task_score(end_logits(logits, rep), rep)
        out.append(scored.view(k, n, *scored.shape[1:]))
    return torch.cat(out)


@dataclass(frozen=True)
class Receivers:
    """Where a sender's effect is allowed to arrive: the logits, or inputs of heads at a role."""

    heads: tuple[Head, ...] = ()
    input: str = "logits"  # "logits", "q", "k" or "v"
    position: str | None = "end"  # the role at which receiver inputs are patched; None: everywhere

    def __post_init__(self) -> None:
        if self.input not in ("logits", *RECEIVER_INPUTS):
            raise ValueError(f"receiver input must be logits, q, k or v; got {self.input!r}")
        if self.input != "logits" and not self.heads:
            raise ValueError("q/k/v receivers need at least one receiver head")


@torch.no_grad()
def path_patch(
    model,
    batch: TaskBatch,
    receivers: Receivers,
    senders: Sequence[Head] | None = None,
    heads_per_pass: int = 16,
    caches: tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """[len(senders), n]: per-prompt score when only the sender->receiver path is corrupted.

    A sender is a head (layer, head) or an MLP (layer, -1). Every head that is not the sender
    is frozen at its clean output; MLPs are recomputed (so paths through MLPs count), except an
    MLP sender, whose output is the corrupted run's. Senders at or after the last receiver
    layer cannot reach a receiver and score as clean.
    `caches` = (clean z, corrupted z) when the caller has them already (discovery's stages).
    """
    senders = list(senders if senders is not None else head_labels(model))
    n = len(batch)
    clean_z, corrupt_z = caches or (z_cache(model, batch.tokens), z_cache(model, batch.corrupted))
    mlp_layers = sorted({lay for lay, head in senders if head < 0})
    corrupt_mlp = {}
    if mlp_layers:
        names = [mlp_name(lay) for lay in mlp_layers]
        _, cache = run_cached(model, batch.corrupted, names)
        corrupt_mlp = {lay: cache[mlp_name(lay)] for lay in mlp_layers}
    n_layers, _ = n_layers_heads(model)
    results = []
    for chunk in _chunks(senders, heads_per_pass):
        k = len(chunk)
        rep = repeat_batch(batch, k)

        def freeze_hook(layer: int, chunk=chunk, k=k):
            def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
                z = clean_z[layer].repeat(k, 1, 1, 1).view(k, n, *z.shape[1:]).clone()
                for copy, (lay, head) in enumerate(chunk):
                    if lay == layer and head >= 0:
                        z[copy, :, :, head] = corrupt_z[layer][:, :, head]
                return z.view(k * n, *z.shape[2:])

            return hook

        def mlp_hook(layer: int, chunk=chunk, k=k):
            def hook(out: torch.Tensor, hook=None) -> torch.Tensor:
                out = out.clone().view(k, n, *out.shape[1:])
                for copy, (lay, head) in enumerate(chunk):
                    if lay == layer and head < 0:
                        out[copy] = corrupt_mlp[layer]
                return out.view(k * n, *out.shape[2:])

            return hook

        freeze = [(z_name(lay), freeze_hook(lay)) for lay in range(n_layers)]
        freeze += [(mlp_name(lay), mlp_hook(lay)) for lay in sorted({lay for lay, h in chunk if h < 0})]
        if receivers.input == "logits":
            logits = model.run_with_hooks(rep.tokens, fwd_hooks=freeze)
        else:
            clean = [(z_name(lay), _constant(clean_z[lay].repeat(k, 1, 1, 1))) for lay in range(n_layers)]
            logits = _patch_receivers(model, rep, receivers, freeze, clean)
        results.append(task_score(end_logits(logits, rep), rep).view(k, n))
    return torch.cat(results)


def _receiver_name(layer: int, kind: str) -> str:
    return f"blocks.{layer}.attn.hook_{kind}"


def _constant(value: torch.Tensor):
    def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
        return value

    return hook


def _patch_receivers(model, rep: TaskBatch, receivers: Receivers, freeze, freeze_clean) -> torch.Tensor:
    """Record receiver inputs under the frozen, sender-corrupted run; patch them into a clean run."""
    names = sorted({_receiver_name(lay, receivers.input) for lay, _ in receivers.heads})
    recorded: dict[str, torch.Tensor] = {}

    def record(act: torch.Tensor, hook) -> None:
        recorded[hook.name] = act.detach()

    model.run_with_hooks(rep.tokens, fwd_hooks=freeze + [(name, record) for name in names])
    rows = torch.arange(rep.tokens.shape[0], device=rep.tokens.device)
    pos = None if receivers.position is None else rep.positions[receivers.position]

    def patch_hook(layer: int):
        heads = [h for lay, h in receivers.heads if lay == layer]

        def hook(act: torch.Tensor, hook) -> torch.Tensor:
            act = act.clone()
            for head in heads:
                if pos is None:
                    act[:, :, head] = recorded[hook.name][:, :, head]
                else:
                    act[rows, pos, head] = recorded[hook.name][rows, pos, head]
            return act

        return hook

    layers = sorted({lay for lay, _ in receivers.heads})
    if receivers.input in ("k", "v") and n_kv_heads(model) < model.cfg.n_heads:
        return _patch_grouped_receivers(model, rep, receivers, recorded, pos, freeze_clean)
    return model.run_with_hooks(
        rep.tokens, fwd_hooks=[(_receiver_name(lay, receivers.input), patch_hook(lay)) for lay in layers]
    )


def _patch_grouped_receivers(model, rep: TaskBatch, receivers: Receivers, recorded, pos, freeze_clean):
    """K/V receivers under grouped-query attention, one query head at a time.

    A K/V head is shared by several query heads, so patching hook_k/hook_v would reach them all.
    Instead: (1) a clean run with the shared K (V) replaced by the recorded one, every head's
    output frozen clean so nothing downstream moves, records the receiver's own attention
    pattern (K) or output z (V); (2) a clean run patches only that query head's pattern or z.
    Exact, because a head's pattern depends on K only and its z on pattern and V only."""
    kind = receivers.input
    rows = torch.arange(rep.tokens.shape[0], device=rep.tokens.device)
    target = "pattern" if kind == "k" else "z"
    layers = sorted({lay for lay, _ in receivers.heads})
    kv_of = {lay: sorted({kv_head(model, h) for l2, h in receivers.heads if l2 == lay}) for lay in layers}
    seen: dict[int, torch.Tensor] = {}

    def shared(layer: int):
        def hook(act: torch.Tensor, hook) -> torch.Tensor:
            act = act.clone()
            for g in kv_of[layer]:
                if pos is None:
                    act[:, :, g] = recorded[hook.name][:, :, g]
                else:
                    act[rows, pos, g] = recorded[hook.name][rows, pos, g]
            return act

        return hook

    def keep(layer: int):
        def hook(act: torch.Tensor, hook) -> None:
            seen[layer] = act.detach().clone()

        return hook

    hooks = [(_receiver_name(lay, kind), shared(lay)) for lay in layers]
    hooks += [(activation_name(lay, target), keep(lay)) for lay in layers]
    model.run_with_hooks(rep.tokens, fwd_hooks=hooks + freeze_clean)
    return _patch_each_set_logits(model, rep.tokens, seen, list(receivers.heads), target)


def _patch_each_set_logits(model, tokens, replacement, heads, activation) -> torch.Tensor:
    """Logits of `tokens` with the heads' activation (all positions) taken from `replacement`."""
    layers = sorted({lay for lay, _ in heads})

    def put(layer: int):
        def hook(act: torch.Tensor, hook=None) -> torch.Tensor:
            act = act.clone()
            for lay, head in heads:
                if lay == layer:
                    _replace_head(act, replacement[layer], head, None, activation)
            return act

        return hook

    hooks = [(activation_name(lay, activation), put(lay)) for lay in layers]
    return model.run_with_hooks(tokens, fwd_hooks=hooks)
