"""One type and one spelling for a circuit component, everywhere (tables, JSON, figures, specs).

A component is attention head H of layer L, named `a{L}.h{H}`, or the MLP of layer L, named
`m{L}` (EAP-IG's and MIB's node names). `Component` is a (layer, head) tuple with head = -1 for
an MLP, so it is a dictionary key and a sort key as plain tuples are, and compares equal to them.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_HEAD = re.compile(r"a(\d+)\.h(\d+)")
_MLP = re.compile(r"m(\d+)")
_LEGACY_HEAD = re.compile(r"(\d+)\.(\d+)")  # 'L.H', accepted in specs written before the names

SPELLING = "heads as a{LAYER}.h{HEAD} (a1.h0), MLPs as m{LAYER} (m1)"


class Component(NamedTuple):
    layer: int
    head: int = -1  # -1: the layer's MLP

    @property
    def name(self) -> str:
        return f"m{self.layer}" if self.head < 0 else f"a{self.layer}.h{self.head}"

    @classmethod
    def parse(cls, text: str) -> Component:
        """'a3.h4' -> (3, 4), 'm2' -> (2, -1); also 'L.H' for a head. ValueError otherwise."""
        text = text.strip()
        if m := _MLP.fullmatch(text):
            return cls(int(m.group(1)), -1)
        if m := _HEAD.fullmatch(text) or _LEGACY_HEAD.fullmatch(text):
            return cls(int(m.group(1)), int(m.group(2)))
        raise ValueError(f"{text!r} names no component; write {SPELLING}")


def component_name(component: tuple[int, int]) -> str:
    """The canonical name of a (layer, head) key: 'a3.h4', or 'm3' for head -1."""
    return Component(*component).name
