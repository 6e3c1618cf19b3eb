"""Edge attribution (EAP, Syed et al. 2023; EAP-IG, Hanna et al. 2024) and edge patching, at
scale, over the graph of `analysis.graph` (EAP-IG / MIB node names).

Scoring. The score of edge u -> v is (a_u(corrupt) - a_u(clean)) . dM/d(input of v), summed over
prompts and positions, M the mean task score (IOI logit difference) over all prompts: a
first-order estimate of how much corrupting that one edge moves M. Per chunk of prompts the
senders' output differences are stored once, [prompts, positions, n_forward, d_model]; during
the backward pass a hook on every receiver input contracts its gradient with them straight into
the dense [n_forward, n_backward] score matrix, so no activation-sized gradient outlives its
layer. Receivers:
- a head's query/key/value input: the residual stream as it enters that head alone. The
  gradient at `hook_q/k/v` is taken back through that head's W_Q/W_K/W_V slice and the
  norm's Jacobian (closed form for LayerNorm and RMSNorm), one head at a time;
- an MLP's input as it feeds the MLP's norm only: the hook on `ln2.hook_in` returns a copy of
  the residual, so its gradient is that of the MLP branch, not of the skip path;
- the logits: the final residual as it enters the final norm.
EAP-IG ("inputs" variant) runs the clean prompts with the input embeddings interpolated,
alpha = k/m for k = 0..m-1, one forward and one backward pass per step, accumulating as it goes;
each step costs 1 forward + 1 backward pass, plus 2 forward passes per chunk for the
differences. Gradients are taken with respect to the input only (no parameter gradients).

Evaluation by edge patching (the intervention that EAP estimates; as EAP-IG's evaluate_graph):
the clean prompts run with every receiver's input rebuilt as its actual input minus, for each
edge into it that is not in the circuit, (sender's output in this run - sender's output on the
corrupted prompts). With every edge kept this is the clean run; with none, the corrupted run.

Memory: prompts are processed in chunks sized so that the estimated memory of one chunk stays
under a budget (default: a quarter of the free RAM or GPU memory, at most 1 GiB).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from circuit_plasticity.analysis.graph import MIB_PERCENTS, Graph, area_under, mib_sizes
from circuit_plasticity.analysis.hooks import stacked_param
from circuit_plasticity.analysis.metrics import task_score
from circuit_plasticity.errors import Unsupported, UserError
from circuit_plasticity.tasks.encode import TaskBatch

QKV = ("q", "k", "v")
GIB = 1024**3


# --- memory budget and the cost estimate ---------------------------------------------------------
def default_memory_budget(device: torch.device | str = "cpu") -> int:
    """A safe share of what is free: a quarter of the free GPU (or RAM) memory, at most 1 GiB
    (measured: the process peaks at about its weights' memory + 1.5 x the budget)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
    else:
        import psutil

        free = psutil.virtual_memory().available
    return int(min(free // 4, GIB))


def bytes_per_prompt(model, seq: int, graph: Graph, grad: bool = True, store: bool = True) -> int:
    """Estimated peak bytes one prompt adds: activations (every layer's saved for a backward
    pass; about two layers' live without one), the logits, and (store) the senders' outputs
    kept per chunk (two copies: differences and a working set)."""
    cfg = model.cfg
    d, layers, heads = int(cfg.d_model), int(cfg.n_layers), int(cfg.n_heads)
    d_mlp = 0 if cfg.attn_only else int(cfg.d_mlp or 4 * d)
    per_layer = 14 * d + 3 * d_mlp + 3 * heads * seq
    per_token = (2 * layers * per_layer if grad else 2 * per_layer) + 2 * int(cfg.d_vocab)
    if store:  # differences, a working copy, and one layer's per-head inputs / receiver grads
        per_token += 2 * graph.n_forward * d + 8 * heads * d
    return 4 * seq * per_token


@dataclass
class Plan:
    """How a chunked analysis will run, stated before it starts."""

    what: str
    prompts: int
    chunk: int
    passes_per_chunk: str
    bytes_per_chunk: int
    budget: int

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.prompts / self.chunk)

    def describe(self) -> str:
        return (
            f"{self.what}: {self.prompts} prompts in {self.n_chunks} chunk(s) of <= {self.chunk}, "
            f"{self.passes_per_chunk} per chunk; estimated peak {self.bytes_per_chunk / GIB:.2f} GiB "
            f"per chunk (budget {self.budget / GIB:.2f} GiB)"
        )


def plan(
    model,
    batch: TaskBatch,
    what: str,
    passes: str,
    budget: int | None,
    grad: bool = True,
    store: bool = True,
    copies: int = 1,
) -> Plan:
    """Prompts per chunk so that `copies` copies of each (batched patching) fit the budget."""
    graph = Graph.from_model(model)
    budget = budget or default_memory_budget(batch.device)
    per = copies * bytes_per_prompt(model, int(batch.tokens.shape[1]), graph, grad, store)
    chunk = max(1, min(len(batch), budget // max(per, 1)))
    return Plan(what, len(batch), int(chunk), passes, int(chunk * per), int(budget))


def _end_only(sub: TaskBatch):
    """A hook keeping only each prompt's END position before the unembedding (the metric reads
    nothing else), so the [prompts, positions, vocabulary] logits are never built."""
    rows = torch.arange(len(sub), device=sub.device)

    def hook(act, hook):
        return act[rows, sub.end][:, None]

    return ("unembed.hook_in", hook)


def _end_score(logits: torch.Tensor, sub: TaskBatch) -> torch.Tensor:
    return task_score(logits[:, -1], sub)


def _chunks(batch: TaskBatch, size: int):
    for start in range(0, len(batch), size):
        yield batch.subset(slice(start, start + size))


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


# --- the model's pieces, read once --------------------------------------------------------------
class _Norm:
    """A block's norm: applied to any [..., d_model] tensor, and its vector-Jacobian product."""

    def __init__(self, module, model):
        self.module = getattr(module, "original_component", module)
        name = type(self.module).__name__.lower()
        self.kind = "ln" if isinstance(self.module, torch.nn.LayerNorm) or "layernorm" in name else "rms"
        if self.kind == "rms" and "rms" not in name:
            raise UserError(f"edge attribution does not know the norm {type(self.module).__name__}")
        self.eps = float(getattr(self.module, "eps", getattr(self.module, "variance_epsilon", 1e-5)))
        weight = getattr(self.module, "weight", None)
        self.weight = None if weight is None else weight.detach()
        if self.weight is not None and "gemma" in name:
            self.weight = 1 + self.weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def vjp(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """dM/dx given dM/d(norm(x)) = g; x [..., d] broadcasts against g."""
        x = x.float()
        if self.kind == "ln":
            x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        xhat = x / scale
        gw = g if self.weight is None else g * self.weight
        if self.kind == "ln":
            gw = gw - gw.mean(-1, keepdim=True)
        return (gw - xhat * (gw * xhat).mean(-1, keepdim=True)) / scale


@dataclass
class _Model:
    graph: Graph
    W_in: dict[str, torch.Tensor]  # q/k/v -> [L, H, d, dh]
    b_in: dict[str, torch.Tensor]  # q/k/v -> [L, H, dh]
    W_O: torch.Tensor  # [L, H, dh, d]
    ln1: list[_Norm]
    ln1_post: list[_Norm] | None  # Gemma-2's norm of the attention output, before the residual

    @classmethod
    def read(cls, model) -> _Model:
        graph = Graph.from_model(model)
        with torch.no_grad():
            W_in = {"q": model.W_Q.detach(), "k": model.W_K.detach(), "v": model.W_V.detach()}
            b_in = {x: _bias(model, x, W_in[x]) for x in QKV}
            W_O = model.W_O.detach()
        if W_in["k"].shape[1] != graph.n_heads:
            raise Unsupported(
                "edge attribution needs one key/value head per query head; this model groups them "
                "(grouped-query attention): analyse models.ungroup.ungrouped_twin(loaded) instead"
            )
        blocks = list(model.blocks)
        post = [_Norm(b.ln1_post, model) for b in blocks] if hasattr(blocks[0], "ln1_post") else None
        _check_decomposable(model, post)
        return cls(graph, W_in, b_in, W_O, [_Norm(block.ln1, model) for block in blocks], post)


def _check_decomposable(model, post: list[_Norm] | None) -> None:
    """Refuse what the graph cannot split exactly: q/k norms (Gemma-3, OLMo-2) sit between a
    head's input and its q/k, and a post-attention norm splits into per-head outputs only when
    it is an RMSNorm without an output bias (w * o_h / rms sums to the block's contribution)."""
    if getattr(model.cfg, "use_qk_norm", False):
        raise Unsupported("edge attribution does not yet support models with q/k norms")
    if post is None:
        return
    b_o = stacked_param(model, "b_O")
    if any(norm.kind != "rms" for norm in post) or (b_o is not None and bool(b_o.abs().max() > 0)):
        raise Unsupported(
            "edge attribution splits a post-attention norm into heads only for an RMSNorm without "
            "an attention output bias; this model has another kind"
        )


def _bias(model, which: str, weight: torch.Tensor) -> torch.Tensor:
    """b_Q/b_K/b_V, zeros for bias-free projections (Llama, Gemma)."""
    bias = stacked_param(model, f"b_{which.upper()}")
    if bias is None:
        return torch.zeros(weight.shape[:2] + weight.shape[3:], dtype=weight.dtype, device=weight.device)
    return bias.detach()


def _sender_hooks(m: _Model, store: torch.Tensor, sign: float, input_override=None) -> list:
    """Hooks adding sign * each sender's output to store[f] ([F, n, pos, d]). A node's output is
    what it adds to the residual stream: a head's z @ W_O, or, under a post-attention RMSNorm
    (Gemma-2), w * (z @ W_O) / rms of the whole attention output, the run's own rms, so the
    heads' outputs still sum to the block's contribution exactly."""
    g = m.graph
    pending: dict[int, torch.Tensor] = {}

    def put_input(act, hook):
        if input_override is not None:
            act = input_override(act)
        store[0] += sign * act.detach()
        return act

    def put_heads(layer):
        start = g.layer_start(layer)

        def hook(z, hook):
            out = torch.einsum("nphe,hed->hnpd", z.detach(), m.W_O[layer])
            if m.ln1_post is None:
                store[start : start + g.n_heads] += sign * out
            else:
                pending[layer] = out
            return z

        return hook

    def put_post_normed_heads(layer):
        start, weight = g.layer_start(layer), m.ln1_post[layer].weight

        def hook(scale, hook):
            out = pending.pop(layer) / scale.detach()
            store[start : start + g.n_heads] += sign * (out if weight is None else out * weight)
            return scale

        return hook

    def put_mlp(layer):
        index = g.layer_start(layer) + g.n_heads

        def hook(act, hook):
            store[index] += sign * act.detach()
            return act

        return hook

    hooks = [("blocks.0.hook_in", put_input)]
    for lay in range(g.n_layers):
        hooks.append((f"blocks.{lay}.attn.hook_z", put_heads(lay)))
        if m.ln1_post is not None:
            hooks.append((f"blocks.{lay}.ln1_post.hook_scale", put_post_normed_heads(lay)))
        if g.has_mlp:
            hooks.append((f"blocks.{lay}.hook_mlp_out", put_mlp(lay)))
    return hooks


def _differences(model, m: _Model, batch: TaskBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(corrupt - clean sender outputs [F, n, pos, d], clean input, corrupted input)."""
    n, seq = batch.tokens.shape
    delta = torch.zeros(m.graph.n_forward, n, seq, m.graph.d_model, device=batch.device)
    inputs = {}

    def keep(key):
        def override(act):
            inputs[key] = act.detach().clone()
            return act

        return override

    with torch.no_grad():
        for tokens, sign, key in ((batch.corrupted, 1.0, "corrupt"), (batch.tokens, -1.0, "clean")):
            model.run_with_hooks(
                tokens, fwd_hooks=[*_sender_hooks(m, delta, sign, keep(key)), _end_only(batch)]
            )
    return delta, inputs["clean"], inputs["corrupt"]


def check_edge_graph(model) -> None:
    """Unsupported (with the reason) when edge attribution cannot split this model exactly."""
    _Model.read(model)


# --- attribution -------------------------------------------------------------------------------
def edge_attribution(
    model,
    batch: TaskBatch,
    ig_steps: int = 0,
    memory_budget_bytes: int | None = None,
    progress: bool = False,
    chunk: int | None = None,
) -> Graph:
    """A Graph whose `scores` hold every edge's EAP (ig_steps=0) or EAP-IG score."""
    m = _Model.read(model)
    g = m.graph
    steps = max(ig_steps, 1)
    p = plan(
        model,
        batch,
        "EAP-IG" if ig_steps else "EAP",
        f"2 forward + {steps} forward/backward",
        memory_budget_bytes,
    )
    size = chunk or p.chunk
    scores = torch.zeros(g.n_forward, g.n_backward, device=batch.device)
    total = len(batch)
    bar = _bar(math.ceil(total / size) * steps, p.what, progress)
    for sub in _chunks(batch, size):
        delta, x_clean, x_corrupt = _differences(model, m, sub)
        for k in range(steps):
            alpha = k / ig_steps if ig_steps else 1.0
            x0 = (x_corrupt + alpha * (x_clean - x_corrupt)).requires_grad_(True)
            _accumulate(model, m, sub, delta, x0, scores, total)
            bar.update(1)
        del delta
    bar.close()
    g.scores = (scores / steps).cpu()
    return g


def _accumulate(model, m: _Model, sub: TaskBatch, delta, x0, scores, total: int) -> None:
    """One forward + backward pass; receiver hooks add their edges' scores into `scores`."""
    g = m.graph
    ln_in: dict[int, torch.Tensor] = {}

    def contract(upto: int, grads: torch.Tensor) -> torch.Tensor:
        """[F<upto, n, pos, d] x [n, pos, R, d] -> [F<upto, R]."""
        a = delta[:upto].reshape(upto, -1)
        b = grads.permute(2, 0, 1, 3).reshape(grads.shape[2], -1)
        return a @ b.T

    def set_input(act, hook):
        return x0

    def keep_ln1(layer):
        def hook(act, hook):
            ln_in[layer] = act.detach()
            return act

        return hook

    def qkv_grad(layer, which):
        slots = g.backward_slice(layer)
        first = slots.start + QKV.index(which) * g.n_heads
        upto = g.layer_start(layer)

        def on_grad(grad):
            through = torch.einsum("nphe,hde->nphd", grad, m.W_in[which][layer])
            receiver = m.ln1[layer].vjp(ln_in[layer][:, :, None], through)
            scores[:upto, first : first + g.n_heads] += contract(upto, receiver)

        def hook(act, hook):
            if act.requires_grad:
                act.register_hook(on_grad)
            return act

        return hook

    def branch_grad(slot: int, upto: int):
        def hook(act, hook):
            copy = act.clone()  # feeds only this receiver: its gradient is the branch's

            def on_grad(grad):
                scores[:upto, slot] += contract(upto, grad[:, :, None])[:, 0]

            copy.register_hook(on_grad)
            return copy

        return hook

    hooks = [("blocks.0.hook_in", set_input), *_receiver_hooks(g, keep_ln1, qkv_grad, branch_grad)]
    with torch.enable_grad():
        logits = model.run_with_hooks(sub.tokens, fwd_hooks=[*hooks, _end_only(sub)])
        metric = _end_score(logits, sub).sum() / total
        del logits
        torch.autograd.grad(metric, x0)


# --- evaluation by edge patching -----------------------------------------------------------------
@torch.no_grad()
def edge_patched_scores(
    model,
    batch: TaskBatch,
    masks: list[torch.Tensor],
    memory_budget_bytes: int | None = None,
    progress: bool = False,
    chunk: int | None = None,
) -> torch.Tensor:
    """[len(masks), n]: per-prompt scores of the clean run with every edge outside each in_graph
    mask ([n_forward, n_backward] bool) patched to its corrupted value."""
    m = _Model.read(model)
    p = plan(model, batch, "edge patching", f"1 + {len(masks)} forward", memory_budget_bytes, grad=False)
    size = chunk or p.chunk
    out = []
    bar = _bar(math.ceil(len(batch) / size) * len(masks), p.what, progress)
    for sub in _chunks(batch, size):
        n, seq = sub.tokens.shape
        corrupt = torch.zeros(m.graph.n_forward, n, seq, m.graph.d_model, device=sub.device)
        model.run_with_hooks(sub.corrupted, fwd_hooks=[*_sender_hooks(m, corrupt, 1.0), _end_only(sub)])
        rows = []
        for mask in masks:
            removed = (m.graph.real & ~mask.bool().cpu()).float().to(sub.device)
            hooks = [*_patch_hooks(m, corrupt, removed), _end_only(sub)]
            rows.append(_end_score(model.run_with_hooks(sub.tokens, fwd_hooks=hooks), sub))
            bar.update(1)
        out.append(torch.stack(rows))
    bar.close()
    return torch.cat(out, dim=1)


def _patch_hooks(m: _Model, corrupt: torch.Tensor, removed: torch.Tensor) -> list:
    g = m.graph
    diff = -corrupt.clone()  # becomes (this run's sender outputs) - (corrupted ones)
    hooks = _sender_hooks(m, diff, 1.0)
    per_head_input: dict[int, torch.Tensor] = {}

    def correction(upto: int, cols) -> torch.Tensor:
        """[n, pos, R, d]: sum over removed edges into receivers `cols` of the senders' diff.
        Computed as all senders' sum minus the kept ones' (few for small circuits); matmuls
        over the contiguous [F, n*pos*d] layout, no copy of the differences."""
        flat = diff[:upto].reshape(upto, -1)
        n_cols = removed[:upto, cols].shape[1]
        kept = 1 - removed[:upto, cols]  # every f < upto is a real edge into these receivers
        out = flat.sum(0, keepdim=True).expand(n_cols, -1)
        rows = kept.any(1).nonzero().flatten()
        if len(rows):
            out = out - kept[rows].T @ flat[rows]
        return out.reshape(n_cols, *diff.shape[1:]).permute(1, 2, 0, 3)

    def ln1_hook(layer):
        slots, upto = g.backward_slice(layer), g.layer_start(layer)

        def hook(act, hook):
            per_head_input.pop(layer, None)
            if removed[:upto, slots].any():
                per_head_input[layer] = act[:, :, None] - correction(upto, slots)  # [n, pos, 3H, d]
            return act

        return hook

    def qkv_hook(layer, which):
        i = QKV.index(which)

        def hook(act, hook):
            if layer not in per_head_input:
                return act
            x = per_head_input[layer][:, :, i * g.n_heads : (i + 1) * g.n_heads]
            normed = m.ln1[layer](x)
            return torch.einsum("nphd,hde->nphe", normed, m.W_in[which][layer]) + m.b_in[which][layer]

        return hook

    def branch_hook(slot: int, upto: int):
        def hook(act, hook):
            if not removed[:upto, slot].any():
                return act
            return act - correction(upto, [slot])[:, :, 0]

        return hook

    return hooks + _receiver_hooks(g, ln1_hook, qkv_hook, branch_hook)


def _receiver_hooks(g: Graph, ln1, qkv, branch) -> list:
    """Where every receiver of the graph reads the residual stream, one layout for attribution
    and for edge patching: each layer's attention input (ln1), its q/k/v, its MLP input (a
    `branch` of the senders before it), and the final norm's input (the logits' branch)."""
    hooks = []
    for lay in range(g.n_layers):
        hooks.append((f"blocks.{lay}.ln1.hook_in", ln1(lay)))
        hooks += [(f"blocks.{lay}.attn.hook_{x}", qkv(lay, x)) for x in QKV]
        if g.has_mlp:
            hooks.append((f"blocks.{lay}.ln2.hook_in", branch(g.mlp_slot(lay), g.senders_before(f"m{lay}"))))
    hooks.append(("ln_final.hook_in", branch(g.n_backward - 1, g.n_forward)))
    return hooks


# --- faithfulness curve, CPR and CMD -----------------------------------------------------------
@torch.no_grad()
def faithfulness_curve(
    model,
    batch: TaskBatch,
    graph: Graph,
    percents=MIB_PERCENTS,
    methods: tuple[str, ...] = ("top_n", "greedy"),
    memory_budget_bytes: int | None = None,
    progress: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MIB faithfulness f = (m(C) - m(empty)) / (m(M) - m(empty)) of edge circuits at MIB's
    sizes, evaluated by edge patching; and per method CPR (area under f) and CMD (area under
    |1 - f|) over the circuit size as a fraction of all edges (0.001 .. 1, trapezoids)."""
    sizes = mib_sizes(graph.n_edges, percents)
    masks = [getattr(graph, method)(size) for method in methods for size in sizes]
    everything, nothing = graph.real.clone(), torch.zeros_like(graph.real)
    scores = edge_patched_scores(model, batch, [everything, nothing, *masks], memory_budget_bytes, progress)
    means = scores.mean(1).tolist()
    full, empty = means[0], means[1]
    span = full - empty
    rows = []
    labels = [(method, pct) for method in methods for pct in percents]
    for i, (method, pct) in enumerate(labels):
        mask = masks[i]
        nodes = graph.nodes_in_graph(mask)
        rows.append(
            {
                "method": method,
                "percent": float(pct),
                "edges": int(mask.sum()),
                "heads": sum(v for k, v in nodes.items() if k.startswith("a")),
                "score": means[2 + i],
                "faithfulness": (means[2 + i] - empty) / span if span else float("nan"),
            }
        )
    curve = pd.DataFrame(rows)
    summary = []
    for method in methods:
        part = curve[curve.method == method]
        xs = [p / 100 for p in part.percent]
        f = part.faithfulness.tolist()
        summary.append(
            {
                "method": method,
                "cpr": area_under(xs, f),
                "cmd": area_under(xs, [abs(1 - v) for v in f]),
                "model_score": full,
                "corrupted_score": empty,
            }
        )
    return curve, pd.DataFrame(summary)


def spearman(a, b) -> float:
    """Rank correlation (average ranks for ties), without SciPy."""
    ra = pd.Series(list(a)).rank().to_numpy()
    rb = pd.Series(list(b)).rank().to_numpy()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / ((ra**2).sum() * (rb**2).sum()) ** 0.5)


@torch.no_grad()
def exact_edge_effects(model, batch: TaskBatch, edges: list[tuple[int, int]] | None = None) -> pd.DataFrame:
    """Each edge patched alone (the intervention EAP estimates): mean score change, one
    forward pass per edge. `edges`: (forward, backward) index pairs; default every edge."""
    g = Graph.from_model(model)
    pairs = edges if edges is not None else [tuple(e) for e in g.real.nonzero().tolist()]
    masks = []
    for f, b in pairs:
        mask = g.real.clone()
        mask[f, b] = False
        masks.append(mask)
    scores = edge_patched_scores(model, batch, [g.real.clone(), *masks])
    base = scores[0].mean()
    return pd.DataFrame(
        {
            "edge": [g.edge_name(f, b) for f, b in pairs],
            "exact": (scores[1:].mean(1) - base).tolist(),
        }
    )
