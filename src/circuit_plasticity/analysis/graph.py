"""The computational graph of a transformer as EAP-IG and MIB name it, with dense edge tensors.

Forward (sender) nodes, in this order: `input` (the embeddings), then per layer the heads
`a{L}.h{H}` and the MLP `m{L}`. Backward (receiver) slots, in this order: per layer the query,
key and value input of every head (q of all heads, then k, then v), then the MLP's input; last
the `logits` (the final residual stream). An edge is a (sender, receiver slot) pair allowed by
causality: a sender reaches every receiver of a later layer, a head also reaches the MLP of its
own layer unless attention and MLP run in parallel (Pythia), and everything reaches the logits.
Edge names: `a3.h4->a9.h9<q>`, `a0.h1->m2`, `m11->logits`, `input->a0.h0<k>`.

`scores` and `in_graph` are [n_forward, n_backward] tensors; `real` marks the slots that are
edges. Our scores are (corrupt - clean) . gradient: an important edge scores negative.
Attention-only models have no MLP nodes here. `to_json` writes the circuit file EAP-IG's
`Graph.from_json` and MIB's evaluator read, as EAP-IG builds the graph (MLP nodes in every
model), scores in MIB's sign and `in_graph` after EAP-IG's pruning: docs/edge-circuit-format.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

QKV = ("q", "k", "v")
MIB_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)  # circuit sizes, % of all edges


@dataclass
class Graph:
    n_layers: int
    n_heads: int
    d_model: int
    parallel_attn_mlp: bool = False
    has_mlp: bool = True

    def __post_init__(self) -> None:
        self.forward_names = ["input"]
        for lay in range(self.n_layers):
            self.forward_names += [f"a{lay}.h{h}" for h in range(self.n_heads)]
            if self.has_mlp:
                self.forward_names.append(f"m{lay}")
        self.backward_names = []
        for lay in range(self.n_layers):
            for x in QKV:
                self.backward_names += [f"a{lay}.h{h}<{x}>" for h in range(self.n_heads)]
            if self.has_mlp:
                self.backward_names.append(f"m{lay}")
        self.backward_names.append("logits")
        self._f = {n: i for i, n in enumerate(self.forward_names)}
        self._b = {n: i for i, n in enumerate(self.backward_names)}
        self.real = torch.zeros(self.n_forward, self.n_backward, dtype=torch.bool)
        for b, name in enumerate(self.backward_names):
            self.real[: self.senders_before(name), b] = True
        self.scores = torch.zeros(self.n_forward, self.n_backward)
        self.in_graph = self.real.clone()

    @classmethod
    def from_model(cls, model) -> Graph:
        cfg = model.cfg
        return cls(
            int(cfg.n_layers),
            int(cfg.n_heads),
            int(cfg.d_model),
            bool(getattr(cfg, "parallel_attn_mlp", False)),
            not bool(getattr(cfg, "attn_only", False)),
        )

    @property
    def n_forward(self) -> int:
        return len(self.forward_names)

    @property
    def n_backward(self) -> int:
        return len(self.backward_names)

    @property
    def n_edges(self) -> int:
        return int(self.real.sum())

    def layer_start(self, layer: int) -> int:
        """Forward index of the first node of `layer` (its head 0)."""
        return 1 + layer * (self.n_heads + int(self.has_mlp))

    def senders_before(self, receiver: str) -> int:
        """How many forward nodes (a prefix of the forward order) can reach `receiver`."""
        if receiver == "logits":
            return self.n_forward
        layer = int(receiver[1:].split(".")[0].split("<")[0])
        if receiver.startswith("m") and not self.parallel_attn_mlp:
            return self.layer_start(layer) + self.n_heads
        return self.layer_start(layer)

    def forward_index(self, name: str) -> int:
        return self._f[name]

    def backward_index(self, name: str) -> int:
        return self._b[name]

    def backward_slice(self, layer: int) -> slice:
        """The q, k and v slots of every head of `layer` (3 * n_heads consecutive slots)."""
        start = layer * (3 * self.n_heads + int(self.has_mlp))
        return slice(start, start + 3 * self.n_heads)

    def mlp_slot(self, layer: int) -> int:
        return layer * (3 * self.n_heads + 1) + 3 * self.n_heads

    # --- edges as a table -------------------------------------------------------------------
    def edge_table(self) -> pd.DataFrame:
        """One row per edge: name, sender, receiver (node), input (q/k/v or ''), score."""
        f, b = self.real.nonzero(as_tuple=True)
        rows = []
        scores = self.scores[f, b].tolist()
        for fi, bi, s in zip(f.tolist(), b.tolist(), scores, strict=True):
            slot = self.backward_names[bi]
            receiver, _, rest = slot.partition("<")
            sender = self.forward_names[fi]
            rows.append(
                {
                    "edge": f"{sender}->{slot}",
                    "sender": sender,
                    "receiver": receiver,
                    "input": rest[:-1],
                    "score": s,
                }
            )
        return pd.DataFrame(rows)

    def edge_name(self, f: int, b: int) -> str:
        return f"{self.forward_names[f]}->{self.backward_names[b]}"

    # --- circuit selection ------------------------------------------------------------------
    def top_n(self, n: int) -> torch.Tensor:
        """in_graph mask of the n real edges of largest |score| (MIB's default selection)."""
        flat = torch.where(self.real, self.scores.abs(), torch.tensor(-1.0)).flatten()
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[flat.topk(min(n, self.n_edges)).indices] = True
        return mask.view_as(self.real) & self.real

    def greedy(self, n: int) -> torch.Tensor:
        """Grow from the logits: repeatedly take the largest-|score| edge into a node already in
        the circuit (Hanna et al. 2024), so every chosen edge leads to the output."""
        import heapq

        chosen = torch.zeros_like(self.real)
        inside_f = torch.zeros(self.n_forward, dtype=torch.bool)
        heap: list[tuple[float, int, int]] = []

        def push_into(slots: list[int]) -> None:
            for b in slots:
                for f in self.real[:, b].nonzero().flatten().tolist():
                    heapq.heappush(heap, (-abs(float(self.scores[f, b])), f, b))

        push_into([self.n_backward - 1])
        count = 0
        while heap and count < n:
            _, f, b = heapq.heappop(heap)
            chosen[f, b] = True
            count += 1
            if not inside_f[f]:
                inside_f[f] = True
                push_into(self.slots_of(self.forward_names[f]))
        return chosen

    def slots_of(self, node: str) -> list[int]:
        """The receiver slots of a forward node (its q/k/v inputs, or its MLP input)."""
        if node == "input":
            return []
        if node.startswith("m"):
            return [self._b[node]]
        return [self._b[f"{node}<{x}>"] for x in QKV]

    def pruned(self, in_graph: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(edges, nodes) left by EAP-IG's pruning (`Graph.prune`): repeatedly drop every node
        without an incoming edge (the input excepted) or without an outgoing one, and every edge
        whose sender or receiver was dropped, until nothing changes. Every node left lies on a
        path from the input to the logits. Pruning never changes what the circuit computes: a
        node with no incoming edge runs on corrupted inputs, so it emits its corrupted output
        either way, and one with no outgoing edge reaches nothing."""
        edges = (self.in_graph if in_graph is None else in_graph).bool() & self.real
        owner = torch.zeros(self.n_forward, self.n_backward, dtype=torch.bool)  # node -> its slots
        for f, name in enumerate(self.forward_names):
            owner[f, self.slots_of(name)] = True
        while True:
            incoming = (owner & edges.any(0)[None, :]).any(1)
            incoming[0] = True  # the input has no inputs to need
            nodes = edges.any(1) & incoming
            receivers = (owner & nodes[:, None]).any(0)
            receivers[-1] = True  # the logits are always in the graph
            kept = edges & nodes[:, None] & receivers[None, :]
            if torch.equal(kept, edges):
                return kept, nodes
            edges = kept

    def nodes_in_graph(self, in_graph: torch.Tensor | None = None) -> dict[str, bool]:
        """A node is in the circuit when EAP-IG's pruning keeps it (`pruned`): it has an
        incoming and an outgoing circuit edge, on a path to the logits."""
        _, nodes = self.pruned(in_graph)
        out = {name: bool(nodes[i]) for i, name in enumerate(self.forward_names)}
        out["logits"] = True
        return out

    # --- EAP-IG's layout: MLP nodes in every model ------------------------------------------
    def eap_ig_layout(self) -> Graph:
        """This graph as EAP-IG builds it for the model: EAP-IG's graph always has an MLP node
        per layer, so an attention-only model's gains MLP nodes whose edges score 0 and are never
        in the circuit (toy-ioi: 262 edges, against 193 here); other models: a copy."""
        full = Graph(self.n_layers, self.n_heads, self.d_model, self.parallel_attn_mlp, has_mlp=True)
        f, b = self.layout_index(full)
        full.scores[:] = 0.0
        full.in_graph[:] = False
        full.scores[f[:, None], b[None, :]] = self.scores
        full.in_graph[f[:, None], b[None, :]] = self.in_graph & self.real
        return full

    def layout_index(self, full: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        """Where this graph's forward nodes and backward slots sit in `full` (EAP-IG's layout)."""
        f = torch.tensor([full.forward_index(n) for n in self.forward_names])
        b = torch.tensor([full.backward_index(n) for n in self.backward_names])
        return f, b

    def from_layout(self, full: Graph, mask: torch.Tensor) -> torch.Tensor:
        """A mask over `full` (EAP-IG's layout) as a mask over this graph's edges."""
        f, b = self.layout_index(full)
        return mask[f[:, None], b[None, :]] & self.real

    # --- the EAP-IG / MIB circuit file ------------------------------------------------------
    def to_json(self, path: str | Path | None = None) -> dict:
        """The circuit file (docs/edge-circuit-format.md): EAP-IG's layout, scores in MIB's sign
        (higher = more important: minus ours), `in_graph` after EAP-IG's pruning."""
        full = self.eap_ig_layout()
        edges_in, nodes_in = full.pruned(full.in_graph)
        cfg = {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "parallel_attn_mlp": self.parallel_attn_mlp,
            "d_model": self.d_model,
        }
        nodes = {name: {"in_graph": bool(nodes_in[i])} for i, name in enumerate(full.forward_names)}
        nodes["logits"] = {"in_graph": True}
        f, b = full.real.nonzero(as_tuple=True)
        edges = {
            full.edge_name(fi, bi): {
                "score": -float(full.scores[fi, bi]),
                "in_graph": bool(edges_in[fi, bi]),
            }
            for fi, bi in zip(f.tolist(), b.tolist(), strict=True)
        }
        info = {
            "format_version": FORMAT_VERSION,
            "score_sign": "mib",
            "attention_only": not self.has_mlp,
            "edges_selected": int((self.in_graph & self.real).sum()),
            "edges_in_graph": int(edges_in.sum()),
        }
        data = {"cfg": cfg, "nodes": nodes, "edges": edges, "circuit_plasticity": info}
        if path is not None:
            Path(path).write_text(json.dumps(data))
        return data

    @classmethod
    def from_json(cls, source: str | Path | dict) -> Graph:
        """A circuit file back as a Graph in our sign: ours (the `circuit_plasticity` block says
        how it was written) or EAP-IG's and MIB's own (MIB's sign, MLP nodes in every model)."""
        data = source if isinstance(source, dict) else json.loads(Path(source).read_text())
        cfg = data["cfg"]
        info = data.get("circuit_plasticity") or {"score_sign": "mib", "attention_only": False}
        sign = -1.0 if info["score_sign"] == "mib" else 1.0
        graph = cls(
            int(cfg["n_layers"]),
            int(cfg["n_heads"]),
            int(cfg["d_model"]),
            bool(cfg["parallel_attn_mlp"]),
            not info["attention_only"],
        )
        graph.in_graph[:] = False
        for name, edge in data["edges"].items():
            sender, slot = name.split("->")
            if sender not in graph._f or slot not in graph._b:
                continue  # an attention-only model's MLP edges (EAP-IG's layout): score 0, never in
            f, b = graph._f[sender], graph._b[slot]
            graph.scores[f, b] = sign * float(edge["score"])
            graph.in_graph[f, b] = bool(edge["in_graph"])
        return graph


FORMAT_VERSION = 2  # the circuit file's layout (docs/edge-circuit-format.md)


def mib_sizes(n_edges: int, percents=MIB_PERCENTS) -> list[int]:
    """Edge counts of MIB's circuit sizes (at least one edge each)."""
    return [max(1, round(n_edges * p / 100)) for p in percents]


def area_under(xs: list[float], ys: list[float]) -> float:
    """Trapezoidal area under ys over xs (xs ascending)."""
    return float(
        sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:], strict=False))
    )
