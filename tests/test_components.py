"""One name per component: the EAP-IG/MIB spelling, round-tripped, and the same in every file."""

from __future__ import annotations

import pytest

from circuit_plasticity.components import Component, component_name


@pytest.mark.parametrize(
    ("text", "key"),
    [("a0.h0", (0, 0)), ("a11.h7", (11, 7)), ("m3", (3, -1)), ("2.5", (2, 5)), (" m0 ", (0, -1))],
)
def test_names_parse_to_keys_and_back(text, key):
    parsed = Component.parse(text)
    assert parsed == key and hash(parsed) == hash(key)  # interchangeable with plain tuples
    assert Component.parse(component_name(key)) == key
    assert component_name(key) == (f"m{key[0]}" if key[1] < 0 else f"a{key[0]}.h{key[1]}")


@pytest.mark.parametrize("text", ["mlp2", "a1", "h1.a2", "1", "a1.h-1", "L1.H2", ""])
def test_bad_names_are_refused_with_the_spelling(text):
    with pytest.raises(ValueError, match=r"a\{LAYER\}\.h\{HEAD\}"):
        Component.parse(text)


def test_circuit_files_use_names_and_read_old_pairs(tmp_path):
    import json

    from circuit_plasticity.analysis.circuit import Circuit, CircuitHead, Edge

    heads = [CircuitHead(1, 2, "name_mover", "end", 0.5), CircuitHead(0, -1, "mlp", "end", 0.1)]
    circuit = Circuit("ioi", "toy", heads, [Edge((0, -1), (1, 2), "q"), Edge((1, 2), "logits", "logits")], 8)
    circuit.save(tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert [h["component"] for h in data["heads"]] == ["a1.h2", "m0"]
    assert data["edges"][0] == {"sender": "m0", "receiver": "a1.h2", "input": "q"}
    assert Circuit.load(tmp_path / "c.json") == circuit
    data["edges"][0].update(sender=[0, -1], receiver=[1, 2])  # a file from before the names
    for h in data["heads"]:
        del h["component"]
    assert Circuit.from_json(data) == circuit


def test_circuit_diagram_draws_every_edge_between_components(monkeypatch):
    """Edges into heads or MLPs are arrows (logit edges are not), from circuit files with names
    and from files with [layer, head] pairs alike."""
    import matplotlib.axes

    from circuit_plasticity.analysis.circuit import Circuit, CircuitHead, Edge
    from circuit_plasticity.report import figures

    heads = [CircuitHead(1, 2, "name_mover", "end", 0.5), CircuitHead(0, 1, "s_inhibition", "end", 0.1)]
    edges = [Edge((0, 1), (1, 2), "q"), Edge((0, -1), (1, 2), "v"), Edge((1, 2), "logits", "logits")]
    named = Circuit("ioi", "toy", heads, edges, 8).to_json()
    paired = {
        **named,
        "edges": [{**e, "sender": list(e_.sender)} for e, e_ in zip(named["edges"], edges, strict=True)],
    }
    arrows = []
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate", lambda self, *a, **k: arrows.append(k["xytext"]))
    figures.circuit_diagram({"base": named, "clean": paired}, n_layers=2, n_heads=4, mlps=True)
    assert sorted(arrows) == sorted([(1, 0), (4, 0)] * 2)  # x of head 1, x of the MLP column; layer 0
