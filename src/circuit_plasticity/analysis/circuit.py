"""The circuit type: heads with roles and positions, edges between them; JSON round trip."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from circuit_plasticity.fileio import write_json


@dataclass(frozen=True)
class CircuitHead:
    layer: int
    head: int
    role: str
    position: str  # the role position it acts at: end, s2, s1+1, ...
    effect: float  # its path-patching effect as a share of the model's score (signed)

    @property
    def key(self) -> tuple[int, int]:
        return (self.layer, self.head)


@dataclass(frozen=True)
class Edge:
    sender: tuple[int, int]
    receiver: tuple[int, int] | str  # a head, or "logits"
    input: str  # logits, q, k or v


@dataclass
class Circuit:
    task: str
    model: str
    heads: list[CircuitHead]
    edges: list[Edge]
    n_model_heads: int
    meta: dict[str, Any] = field(default_factory=dict)

    def head_set(self) -> set[tuple[int, int]]:
        return {h.key for h in self.heads}

    def by_role(self, role: str) -> list[tuple[int, int]]:
        return [h.key for h in self.heads if h.role == role]

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "model": self.model,
            "n_model_heads": self.n_model_heads,
            "heads": [asdict(h) for h in self.heads],
            "edges": [
                {
                    "sender": list(e.sender),
                    "receiver": e.receiver if isinstance(e.receiver, str) else list(e.receiver),
                    "input": e.input,
                }
                for e in self.edges
            ],
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Circuit:
        return cls(
            task=data["task"],
            model=data["model"],
            n_model_heads=data["n_model_heads"],
            heads=[CircuitHead(**h) for h in data["heads"]],
            edges=[
                Edge(
                    tuple(e["sender"]),
                    e["receiver"] if isinstance(e["receiver"], str) else tuple(e["receiver"]),
                    e["input"],
                )
                for e in data["edges"]
            ],
            meta=data.get("meta", {}),
        )

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        return cls.from_json(json.loads(Path(path).read_text()))
