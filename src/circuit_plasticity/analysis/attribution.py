"""Edge attribution: EAP (Syed et al. 2023) and EAP-IG (Hanna et al. 2024) over the graph of
heads and MLPs, with each head's query, key and value inputs as separate receivers.

Nodes: `input` (embeddings), `a{l}.{h}` (head outputs), `m{l}` (MLP outputs), `logits`.
The score of edge u -> v is (a_u(corrupt) - a_u(clean)) . dM/d(input of v), summed over
positions, with M the mean over prompts: a first-order estimate of how much corrupting that one edge
moves the metric M (mean logit difference). A head's q/k/v gradient reaches the residual stream
through its own W_Q/W_K/W_V slice and the LayerNorm Jacobian, computed in closed form, so one
backward pass scores every edge. EAP-IG averages the gradients over inputs interpolated between
the corrupted and the clean embeddings. `exact_edge_effects` patches each head -> head/logits
edge for real (path patching), the reference the tests rank-correlate against.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from circuit_plasticity.analysis.hooks import head_labels
from circuit_plasticity.analysis.metrics import end_logits, task_score
from circuit_plasticity.analysis.patching import Receivers, path_patch, z_cache
from circuit_plasticity.tasks.encode import TaskBatch

QKV = ("q", "k", "v")


@dataclass
class _Run:
    grads: dict[str, torch.Tensor]  # hook name -> gradient of M
    acts: dict[str, torch.Tensor]  # hook name -> activation


def _capture(model, tokens: torch.Tensor, batch: TaskBatch, names: list[str], embed_override=None) -> _Run:
    """Forward with the named activations retained, backward of the mean task score."""
    stash: dict[str, torch.Tensor] = {}

    def keeper(name: str):  # keyed by the name we asked for (TransformerLens may report an alias)
        def keep(act: torch.Tensor, hook) -> torch.Tensor:
            if act.requires_grad:
                act.retain_grad()
            stash[name] = act
            return act

        return keep

    hooks = [(n, keeper(n)) for n in names]
    if embed_override is not None:
        hooks.insert(0, ("embed.hook_out", lambda act, hook: embed_override.clone().requires_grad_(True)))
    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        metric = task_score(end_logits(logits, batch), batch).mean()
        model.zero_grad(set_to_none=True)
        metric.backward()
    grads = {n: stash[n].grad.detach() for n in names if stash[n].grad is not None}
    acts = {n: stash[n].detach() for n in names}
    model.zero_grad(set_to_none=True)
    return _Run(grads, acts)


def _ln_backward(
    g: torch.Tensor, normalized: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """dM/dx for y = w * (x - mean) / scale + b, given dM/dy (LayerNorm Jacobian, transposed)."""
    gw = g * weight
    return (gw - gw.mean(-1, keepdim=True) - normalized * (gw * normalized).mean(-1, keepdim=True)) / scale


def _names(model) -> list[str]:
    names = ["embed.hook_out", "ln_final.hook_in"]
    for lay in range(model.cfg.n_layers):
        names += [f"blocks.{lay}.attn.hook_{x}" for x in QKV]
        names += [f"blocks.{lay}.ln1.hook_scale", f"blocks.{lay}.ln1.hook_normalized"]
        if not model.cfg.attn_only:
            names += [f"blocks.{lay}.ln2.hook_in", f"blocks.{lay}.hook_mlp_out"]
    return names


def _receiver_grads(model, run: _Run) -> dict[str, torch.Tensor]:
    """Receiver name -> dM/d(its input in the residual stream), [n, pos, d_model]."""
    out = {"logits": run.grads["ln_final.hook_in"]}
    for lay in range(model.cfg.n_layers):
        ln = model.blocks[lay].ln1
        normalized = run.acts[f"blocks.{lay}.ln1.hook_normalized"]
        scale = run.acts[f"blocks.{lay}.ln1.hook_scale"]
        weights = {"q": model.W_Q[lay], "k": model.W_K[lay], "v": model.W_V[lay]}
        for x in QKV:
            g = run.grads[f"blocks.{lay}.attn.hook_{x}"]  # [n, pos, heads, d_head]
            through = torch.einsum("nphe,hde->nphd", g, weights[x])
            for h in range(model.cfg.n_heads):
                out[f"a{lay}.{h}.{x}"] = _ln_backward(through[:, :, h], normalized, scale, ln.weight)
        if not model.cfg.attn_only:
            out[f"m{lay}"] = run.grads[f"blocks.{lay}.ln2.hook_in"]
    return out


def _sender_deltas(model, clean: _Run, corrupt: _Run, clean_z, corrupt_z) -> dict[str, torch.Tensor]:
    """Sender name -> a(corrupt) - a(clean) in the residual stream, [n, pos, d_model]."""
    out = {"input": corrupt.acts["embed.hook_out"] - clean.acts["embed.hook_out"]}
    for lay in range(model.cfg.n_layers):
        dz = corrupt_z[lay] - clean_z[lay]
        per_head = torch.einsum("nphe,hed->nphd", dz, model.W_O[lay])
        for h in range(model.cfg.n_heads):
            out[f"a{lay}.{h}"] = per_head[:, :, h]
        if not model.cfg.attn_only:
            out[f"m{lay}"] = (
                corrupt.acts[f"blocks.{lay}.hook_mlp_out"] - clean.acts[f"blocks.{lay}.hook_mlp_out"]
            )
    return out


def _layer(node: str) -> float:
    if node == "input":
        return -1
    if node.startswith("logits"):
        return float("inf")
    return int(node[1:].split(".")[0]) + (0.5 if node.startswith("m") else 0)


@torch.no_grad()
def _no_grad_receiver_grads(model, run: _Run) -> dict[str, torch.Tensor]:
    return _receiver_grads(model, run)


def edge_attribution(model, batch: TaskBatch, ig_steps: int = 0) -> pd.DataFrame:
    """Every edge's EAP score (ig_steps=0) or EAP-IG score (ig_steps interpolation steps)."""
    names = _names(model)
    clean = _capture(model, batch.tokens, batch, names)
    corrupt = _capture(model, batch.corrupted, batch, names)
    with torch.no_grad():
        clean_z, corrupt_z = z_cache(model, batch.tokens), z_cache(model, batch.corrupted)
    if ig_steps:
        e_clean, e_corrupt = clean.acts["embed.hook_out"], corrupt.acts["embed.hook_out"]
        runs = [
            _capture(model, batch.tokens, batch, names, e_corrupt + (k / ig_steps) * (e_clean - e_corrupt))
            for k in range(1, ig_steps + 1)
        ]
        grads = [_no_grad_receiver_grads(model, r) for r in runs]
        receivers = {key: torch.stack([g[key] for g in grads]).mean(0) for key in grads[0]}
    else:
        receivers = _no_grad_receiver_grads(model, clean)
    with torch.no_grad():
        senders = _sender_deltas(model, clean, corrupt, clean_z, corrupt_z)
    rows = []
    for r_name, g in receivers.items():
        r_node = r_name.rsplit(".", 1)[0] if r_name.endswith(QKV) and r_name.startswith("a") else r_name
        for s_name, delta in senders.items():
            reaches = _layer(s_name) < _layer(r_node) or (
                s_name.startswith("a") and r_node.startswith("m") and _layer(s_name) <= _layer(r_node)
            )
            if reaches:
                score = float((delta * g).sum())  # g is already the gradient of the prompt mean
                rows.append({"sender": s_name, "receiver": r_name, "score": score})
    return pd.DataFrame(rows)


@torch.no_grad()
def exact_edge_effects(model, batch: TaskBatch) -> pd.DataFrame:
    """Head -> head q/k/v and head -> logits edges patched for real (all positions): the
    reference for EAP. Exact for attention-only models; with MLPs, path patching also lets the
    sender reach the receiver through MLPs."""
    clean = task_score(end_logits(model(batch.tokens), batch), batch)
    caches = (z_cache(model, batch.tokens), z_cache(model, batch.corrupted))
    labels = head_labels(model)
    rows = []
    targets = [("logits", Receivers())] + [
        (f"a{lay}.{h}.{x}", Receivers(((lay, h),), x, None)) for lay, h in labels if lay > 0 for x in QKV
    ]
    for name, receivers in targets:
        senders = labels if name == "logits" else [s for s in labels if s[0] < receivers.heads[0][0]]
        effects = (path_patch(model, batch, receivers, senders, caches=caches) - clean[None]).mean(1)
        rows += [
            {"sender": f"a{lay}.{h}", "receiver": name, "exact": float(e)}
            for (lay, h), e in zip(senders, effects, strict=True)
        ]
    return pd.DataFrame(rows)


def spearman(a, b) -> float:
    """Rank correlation (average ranks for ties), without SciPy."""
    ra = pd.Series(list(a)).rank().to_numpy()
    rb = pd.Series(list(b)).rank().to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / ((ra**2).sum() * (rb**2).sum()) ** 0.5)


def _heads_of(nodes: set[str]) -> set[tuple[int, int]]:
    out = set()
    for node in nodes:
        if node.startswith("a"):
            lay, head = node[1:].split(".")[:2]
            out.add((int(lay), int(head)))
    return out


def _node(name: str) -> str:
    return name.rsplit(".", 1)[0] if name.startswith("a") and name.endswith(QKV) else name


def top_n_circuit(edges: pd.DataFrame, n: int) -> pd.DataFrame:
    """The n edges of largest |score|."""
    return edges.assign(mag=edges.score.abs()).nlargest(n, "mag").drop(columns="mag")


def greedy_circuit(edges: pd.DataFrame, n: int) -> pd.DataFrame:
    """Grow from the logits: repeatedly add the largest-|score| edge into a node already in the
    circuit (Hanna et al. 2024), so every edge is connected to the output."""
    inside, chosen = {"logits"}, []
    remaining = edges.assign(mag=edges.score.abs(), node=[_node(r) for r in edges.receiver])
    while len(chosen) < n:
        frontier = remaining[remaining.node.isin(inside)]
        if frontier.empty:
            break
        best = frontier.mag.idxmax()
        chosen.append(best)
        inside.add(remaining.loc[best, "sender"])
        remaining = remaining.drop(best)
    return edges.loc[chosen]


@torch.no_grad()
def faithfulness_curve(model, batch: TaskBatch, edges: pd.DataFrame, sizes: list[int]) -> pd.DataFrame:
    """Faithfulness of top-n and greedy edge circuits of each size, evaluated at the node level:
    every head that no chosen edge touches is mean-ablated (one batched pass per method)."""
    from circuit_plasticity.analysis.ablation import group_means
    from circuit_plasticity.analysis.faithfulness import ablated_scores

    labels = head_labels(model)
    means = group_means(model, batch)
    f_model = float(task_score(end_logits(model(batch.tokens), batch), batch).mean())
    rows = []
    for method, select in (("top_n", top_n_circuit), ("greedy", greedy_circuit)):
        kept = []
        for size in sizes:
            chosen = select(edges, size)
            kept.append(_heads_of(set(chosen.sender) | {_node(r) for r in chosen.receiver}))
        scores = ablated_scores(model, batch, [[h for h in labels if h not in k] for k in kept], means)
        rows += [
            {"method": method, "edges": size, "heads": len(k), "faithfulness": s / f_model}
            for size, k, s in zip(sizes, kept, scores, strict=True)
        ]
    return pd.DataFrame(rows)
