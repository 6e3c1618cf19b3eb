"""The circuit type: heads with roles and positions, edges between them; JSON round trip."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from circuit_plasticity.components import Component, component_name
from circuit_plasticity.fileio import portable_path, resolve_path, write_json


@dataclass(frozen=True)
class CircuitHead:
    layer: int
    head: int
    role: str
    position: str  # the role position it acts at: end, s2, s1+1, ...
    effect: float  # its path-patching effect as a share of the model's score (signed)

    @property
    def key(self) -> Component:
        return Component(self.layer, self.head)


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
        """Components by their one name (`a1.h2`, `m1`); `layer` and `head` kept beside it."""
        return {
            "task": self.task,
            "model": self.model,
            "n_model_heads": self.n_model_heads,
            "heads": [{"component": component_name(h.key), **asdict(h)} for h in self.heads],
            "edges": [
                {
                    "sender": component_name(e.sender),
                    "receiver": e.receiver if isinstance(e.receiver, str) else component_name(e.receiver),
                    "input": e.input,
                }
                for e in self.edges
            ],
            "meta": self.meta,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Circuit:
        fields = set(CircuitHead.__dataclass_fields__)
        return cls(
            task=data["task"],
            model=data["model"],
            n_model_heads=data["n_model_heads"],
            heads=[CircuitHead(**{k: v for k, v in h.items() if k in fields}) for h in data["heads"]],
            edges=[Edge(_key(e["sender"]), _receiver(e["receiver"]), e["input"]) for e in data["edges"]],
            meta=data.get("meta", {}),
        )

    def save(self, path: str | Path) -> None:
        """JSON at `path`; the model path relative to the file inside a study directory."""
        data = self.to_json()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        data["model"] = portable_path(self.model, Path(path).parent)
        write_json(path, data)

    @classmethod
    def load(cls, path: str | Path) -> Circuit:
        circuit = cls.from_json(json.loads(Path(path).read_text()))
        circuit.model = resolve_path(circuit.model, Path(path).parent)
        return circuit


def _key(value: str | list[int]) -> tuple[int, int]:
    """A component from its name, or from a [layer, head] pair (files written before names)."""
    return Component.parse(value) if isinstance(value, str) else Component(*value)


def _receiver(value: str | list[int]) -> tuple[int, int] | str:
    return value if value == "logits" else _key(value)
