"""Node and edge overlap of EAP-IG circuits (compare/edges.py) against a slow reference written
from the definitions (docs/analysis.md, "Nodes or edges"): plain Python sets and loops over
edge names on two hand-made graphs."""

from __future__ import annotations

import random

import pytest

from circuit_plasticity.analysis.graph import Graph
from circuit_plasticity.compare.edges import change_of, graph_overlap


def _graph(scores: dict[str, float]) -> Graph:
    g = Graph(2, 2, 8, has_mlp=True)
    for name, s in scores.items():
        sender, slot = name.split("->")
        g.scores[g.forward_index(sender), g.backward_index(slot)] = s
    return g


def _edge_names(g: Graph) -> list[str]:
    return [f"{g.forward_names[f]}->{g.backward_names[b]}" for f, b in g.real.nonzero().tolist()]


def _ref_top(scores: dict[str, float], percent: float) -> set[str]:
    n = max(1, round(len(scores) * percent / 100))
    return set(sorted(scores, key=lambda e: -abs(scores[e]))[:n])


def _ref_nodes(edges: set[str]) -> set[str]:
    out = set()
    for e in edges:
        sender, slot = e.split("->")
        receiver = slot.split("<")[0]
        out |= {sender, receiver}
    return out - {"input", "logits"}


def _ref_ranks(xs: list[float]) -> list[float]:
    ranks = []
    for x in xs:
        below = sum(1 for y in xs if y < x)
        equal = sum(1 for y in xs if y == x)
        ranks.append(below + (equal + 1) / 2)
    return ranks


def _ref_spearman(a: list[float], b: list[float]) -> float:
    ra, rb = _ref_ranks(a), _ref_ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    return cov / (va * vb) ** 0.5


def _jac(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _reference(sa: dict[str, float], sb: dict[str, float], percents) -> dict[tuple[str, float], float]:
    out = {}
    for p in percents:
        ta, tb = _ref_top(sa, p), _ref_top(sb, p)
        na, nb = _ref_nodes(ta), _ref_nodes(tb)
        out[("edge_jaccard", p)] = _jac(ta, tb)
        out[("edge_kept", p)] = len(ta & tb) / len(ta)
        out[("node_jaccard", p)] = _jac(na, nb)
        out[("node_kept", p)] = len(na & nb) / len(na) if na else 1.0
    names = sorted(sa)
    out[("edge_spearman", None)] = _ref_spearman([sa[e] for e in names], [sb[e] for e in names])
    return out


def _compare(sa, sb, percents=(1, 5, 10, 20, 50)):
    rows = graph_overlap(_graph(sa), _graph(sb), percents)
    got = {
        (r["measure"], None if r["measure"] == "edge_spearman" else r["percent"]): r["value"] for r in rows
    }
    want = _reference(sa, sb, percents)
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    return got


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlaps_equal_the_slow_reference_on_random_graphs(seed):
    rng = random.Random(seed)
    names = _edge_names(Graph(2, 2, 8, has_mlp=True))
    sa = {e: rng.uniform(-1, 1) for e in names}  # distinct |scores| almost surely
    sb = {e: (v if rng.random() < 0.6 else rng.uniform(-1, 1)) for e, v in sa.items()}
    _compare(sa, sb)


def test_hand_made_swap_of_one_query_sender_keeps_the_nodes():
    """Two hand-made graphs: a1.h0's query reads a0.h0 in one and a0.h1 in the other; every other
    edge has the same score. Both a0 heads also write to the logits, so the node sets agree."""
    names = _edge_names(Graph(2, 2, 8, has_mlp=True))
    base = {e: 0.001 * (i + 1) for i, e in enumerate(names)}  # small, distinct
    base |= {"a0.h0->logits": 5.0, "a0.h1->logits": 4.0, "a1.h0->logits": 3.0, "a0.h0->a1.h0<q>": -2.0}
    swapped = dict(base)
    swapped["a0.h0->a1.h0<q>"], swapped["a0.h1->a1.h0<q>"] = base["a0.h1->a1.h0<q>"], -2.0
    got = _compare(base, swapped, percents=(10, 20))
    # 10 % of the 46 edges is 5: the 4 large ones and m1->logits (the largest small one); one of
    # the five replaced by another: 4 shared of 6
    assert len(names) == 46 and names[-1] == "m1->logits"
    assert got[("edge_jaccard", 10)] == pytest.approx(4 / 6)
    assert got[("edge_kept", 10)] == pytest.approx(4 / 5)
    assert got[("node_jaccard", 10)] == 1.0
    change = change_of(graph_overlap(_graph(base), _graph(swapped), (10,)))
    assert change["edge_change"] == pytest.approx(2 / 6) and change["node_change"] == 0.0


def test_a_graph_against_itself_changes_nothing_and_ties_average_their_ranks():
    names = _edge_names(Graph(2, 2, 8, has_mlp=True))
    same = {e: float(i % 5) for i, e in enumerate(names)}  # many ties
    rows = graph_overlap(_graph(same), _graph(same))
    assert all(r["value"] == pytest.approx(1.0) for r in rows)
    flipped = {e: -v for e, v in same.items()}
    assert _compare(same, flipped)[("edge_spearman", None)] == pytest.approx(-1.0)


def _ref_top_changes(sa: dict[str, float], sb: dict[str, float], n: int) -> list[dict]:
    """From the definition: the n edges of largest |b - a|, ties in edge-name order as listed."""
    names = list(sa)
    ranked = sorted(names, key=lambda e: -abs(sb[e] - sa[e]))  # stable: ties keep the listing
    out = []
    for e in ranked[:n]:
        sender, slot = e.split("->")
        receiver, _, rest = slot.partition("<")
        out.append(
            {
                "sender": sender,
                "receiver": receiver,
                "input": rest.rstrip(">"),
                "reference_score": sa[e],
                "score": sb[e],
                "change": sb[e] - sa[e],
            }
        )
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_top_changed_edges_equal_the_slow_reference(seed):
    from circuit_plasticity.compare.edges import top_changes

    rng = random.Random(seed)
    names = _edge_names(Graph(2, 2, 8, has_mlp=True))
    # multiples of 1/16: exact in float32, so the differences are exact and ties are real
    sa = {e: rng.randint(-32, 32) / 16 for e in names}
    sb = {e: (v if rng.random() < 0.5 else rng.randint(-32, 32) / 16) for e, v in sa.items()}
    for n in (0, 1, 7, len(names), len(names) + 5):
        assert top_changes(_graph(sa), _graph(sb), n) == _ref_top_changes(sa, sb, n)


def test_top_changed_edges_of_a_hand_made_query_swap():
    """The q-sender swap of a1.h0 moves exactly two edges, by +-1.5, the q slot named."""
    from circuit_plasticity.compare.edges import top_changes

    names = _edge_names(Graph(2, 2, 8, has_mlp=True))
    base = {e: 0.0 for e in names} | {"a0.h0->a1.h0<q>": -2.0, "a0.h1->a1.h0<q>": -0.5, "m1->logits": 3.0}
    swapped = base | {"a0.h0->a1.h0<q>": -0.5, "a0.h1->a1.h0<q>": -2.0}
    top = top_changes(_graph(base), _graph(swapped), 3)
    assert [(r["sender"], r["receiver"], r["input"], r["change"]) for r in top[:2]] == [
        ("a0.h0", "a1.h0", "q", 1.5),
        ("a0.h1", "a1.h0", "q", -1.5),
    ]
    assert top[2]["change"] == 0.0
    with pytest.raises(ValueError, match="layouts"):
        top_changes(_graph(base), Graph(1, 2, 8, has_mlp=True), 3)


def test_the_edge_diagram_draws_the_changed_edges_only_the_largest_on_top():
    """Two edges moved by +-1.5 and a third not at all (it fills the top 3): the diagram draws
    the two, the larger-ranked last, and not the unchanged one in the "fell" colour."""
    import pandas as pd

    from circuit_plasticity.compare.edges import top_changes
    from circuit_plasticity.report.figures import drawn_edge_changes

    names = _edge_names(Graph(2, 2, 8, has_mlp=True))
    base = {e: 0.0 for e in names} | {"a0.h0->a1.h0<q>": -2.0, "a0.h1->a1.h0<q>": -0.5}
    swapped = base | {"a0.h0->a1.h0<q>": -0.5, "a0.h1->a1.h0<q>": -2.0}
    top = top_changes(_graph(base), _graph(swapped), 3)
    table = pd.DataFrame([{**r, "phase": "poisoned", "rank": i} for i, r in enumerate(top)])
    drawn = drawn_edge_changes(table, "poisoned")
    assert list(drawn["rank"]) == [1, 0]
    assert (drawn.change != 0).all()
    assert drawn_edge_changes(table, "retrain").empty


def test_checkpoint_selection_keeps_what_the_finding_reads():
    from pathlib import Path

    from circuit_plasticity.study.edge_tracking import edge_checkpoints

    kept = [("clean", s, Path(f"c{s}")) for s in (32, 64)]
    kept += [("poisoned", s, Path(f"p{s}")) for s in (32, 64, 96, 128)]
    kept += [("retrain", s, Path(f"r{s}")) for s in (32, 64, 96, 128)]
    kept += [("control", s, Path(f"k{s}")) for s in range(32, 257, 32)]
    picked = [(p, s) for p, s, _ in edge_checkpoints(kept, 0)]
    assert picked == [("clean", 64), ("poisoned", 128), ("retrain", 128)] + [
        ("control", s) for s in (64, 128, 256)
    ]
    assert len(edge_checkpoints(kept, 1)) == len(kept)
    assert ("control", 96) in [(p, s) for p, s, _ in edge_checkpoints(kept, 3)]


def test_findings_hold_each_phase_against_the_control_at_equal_steps():
    """A hand-made tracking table: the poison moves edges (Jaccard 0.5) and keeps nodes; the
    control at the poison's steps moves edges by 0.1; the retrain restores the edges fully."""
    import pandas as pd

    from circuit_plasticity.study.edge_tracking import edge_findings

    def rows(phase, step, edge_j, node_j):
        return [
            {"phase": phase, "step": step, "measure": m, "percent": p, "value": v}
            for p in (1.0, 5.0, 10.0)
            for m, v in (("edge_jaccard", edge_j), ("node_jaccard", node_j), ("reference_faithfulness", 0.9))
        ]

    table = pd.DataFrame(
        rows("clean", 64, 0.8, 0.9)
        + rows("poisoned", 128, 0.5, 1.0)
        + rows("retrain", 128, 1.0, 1.0)
        + rows("control", 64, 0.7, 1.0)
        + rows("control", 128, 0.9, 1.0)
        + rows("control", 256, 0.8, 1.0)
    )
    out = edge_findings(table)
    assert out["edges_poisoned_edge_change"] == pytest.approx(0.5)
    assert out["edges_poisoned_null_step"] == 128 and out["edges_poisoned_null_edge_change"] == pytest.approx(
        0.1
    )
    assert out["edges_poisoned_excess"] == pytest.approx(0.4)
    assert out["edges_clean_null_step"] == 64 and out["edges_clean_excess"] == pytest.approx(
        (0.2 - 0.1) - 0.3
    )
    assert out["edges_retrain_null_step"] == 256 and out["edges_retrain_edges_restored"] == pytest.approx(1.0)


def test_the_report_draws_the_overlaps_or_says_why_not():
    import pandas as pd

    from circuit_plasticity.report.build import _figure
    from circuit_plasticity.report.explain import nodes_or_edges
    from circuit_plasticity.report.figures import edge_tracking_curves

    table = pd.DataFrame(
        [
            {"phase": p, "step": s, "measure": m, "percent": 5.0, "value": 0.5, "seed": 0}
            for p in ("clean", "poisoned", "retrain", "control")
            for s in (32, 64)
            for m in ("node_jaccard", "edge_jaccard")
        ]
    )
    assert edge_tracking_curves(table)[:4] == b"\x89PNG"
    empty = _figure("t", "c", edge_tracking_curves, table.iloc[0:0], missing="No edge tracking.")
    assert empty.missing == "No edge tracking." and empty.png is None
    findings = pd.DataFrame(
        [
            {"measure": "edges_poisoned_edge_excess", "mean": 0.4, "ci_low": 0.3, "ci_high": 0.5},
            {"measure": "edges_poisoned_node_excess", "mean": 0.0, "ci_low": -0.02, "ci_high": 0.02},
        ]
    )
    assert "Poisoning: edges changed, nodes kept" in nodes_or_edges(findings)


def test_a_judgement_recorded_before_edge_tracking_is_not_a_changed_option():
    import dataclasses
    import json

    from circuit_plasticity.study.inputs import changes
    from circuit_plasticity.study.judge import JudgeOptions

    mine = {"models": {}, "options": json.loads(json.dumps(dataclasses.asdict(JudgeOptions()), default=str))}
    old = {"models": {}, "options": {k: v for k, v in mine["options"].items() if k != "edge_tracking_every"}}
    assert changes(old, mine) == ([], {})
    other = {**mine, "options": {**mine["options"], "edge_tracking_every": 2}}
    assert changes(old, other)[0] == ["edge_tracking_every"]


def _cache(compare, graphs: dict[str, Graph]) -> None:
    """Graphs written as study/edge_tracking caches them (scores, layout in the metadata)."""
    from safetensors.torch import save_file

    (compare / "edge_graphs").mkdir(parents=True, exist_ok=True)
    for name, g in graphs.items():
        layout = {"n_layers": 2, "n_heads": 2, "d_model": 8, "parallel_attn_mlp": 0, "has_mlp": 1}
        save_file(
            {"scores": g.scores.contiguous()},
            str(compare / "edge_graphs" / f"{name}.safetensors"),
            metadata={k: str(v) for k, v in layout.items()},
        )


def _hand_made_phases() -> dict[str, dict[str, float]]:
    """A base; the clean fine-tune raises a0.h0's query edge; the poison swaps a1.h0's query
    sender; the retrain undoes half of it; the control (three checkpoints) barely moves."""
    names = _edge_names(Graph(2, 2, 8, has_mlp=True))
    # multiples of 1/64: exact in float32, so the slow reference's differences are the same
    base = {e: (i + 1) / 64 for i, e in enumerate(names)} | {"a1.h0->logits": 3.0}
    clean = base | {"a0.h0->a1.h0<q>": -2.0}
    poisoned = clean | {"a0.h0->a1.h0<q>": -0.5, "a0.h1->a1.h0<q>": -2.0, "m1->logits": 1.0}
    retrain = clean | {"a0.h0->a1.h0<q>": -1.25, "a0.h1->a1.h0<q>": -1.0}
    control = {s: clean | {"a0.h1->m1": s / 1024} for s in (64, 128, 256)}
    return {
        "base-0": base,
        "clean-64": clean,
        "poisoned-128": poisoned,
        "retrain-128": retrain,
        **{f"control-{s}": c for s, c in control.items()},
    }


def test_edge_changes_hold_each_phase_against_its_reference_from_the_cache(tmp_path):
    from circuit_plasticity.study.edge_tracking import change_pairs, edge_changes

    phases = _hand_made_phases()
    _cache(tmp_path, {k: _graph(v) for k, v in phases.items()})
    assert change_pairs(tmp_path / "edge_graphs") == [
        ("clean", 64, "base", 0),
        ("poisoned", 128, "clean", 64),
        ("retrain", 128, "clean", 64),
        ("control", 128, "clean", 64),  # the poison's null: the control at its steps
    ]
    table = edge_changes(tmp_path, n=4)
    assert (tmp_path / "edge_changes.parquet").is_file()
    for (phase, reference), rows in table.groupby(["phase", "reference"], sort=False):
        mine = phases[f"{phase}-{rows.step.iloc[0]}"]
        ref = phases[f"{reference}-{rows.reference_step.iloc[0]}"]
        want = _ref_top_changes(ref, mine, 4)
        got = rows.drop(columns=["phase", "step", "reference", "reference_step", "rank"]).to_dict("records")
        assert got == want, phase
        assert list(rows["rank"]) == [0, 1, 2, 3]
    poisoned = table[table.phase == "poisoned"]
    assert list(poisoned.sender[:2]) == ["a0.h1", "a0.h0"] and set(poisoned.input[:2]) == {"q"}
    assert edge_changes(tmp_path / "nothing") is None


def _run_dir(root, phases: dict[str, dict[str, float]]):
    """The least of a judged directory that the report reads: one seed's phase analyses (heads,
    curves, edges, circuit) and cached graphs, findings and verdicts."""
    import json

    import pandas as pd

    from circuit_plasticity.compare.verdicts import VerdictThresholds, decide
    from circuit_plasticity.study.edge_tracking import edge_changes

    seed = root / "seeds" / "seed-0"
    for phase in ("base", "clean", "poisoned", "retrain", "control"):
        d = seed / "analysis" / phase
        d.mkdir(parents=True)
        heads = [
            {"layer": lay, "head": h, "measure": "dla", "value": 0.1} for lay in (0, 1) for h in (0, 1, -1)
        ]
        pd.DataFrame(heads).to_parquet(d / "heads.parquet")
        pd.DataFrame([{"method": "top_n", "edges": 4, "faithfulness": 0.5}]).to_parquet(
            d / "faithfulness_curve.parquet"
        )
        pd.DataFrame([{"edge": "a1.h0->logits", "score": 3.0}]).to_parquet(d / "edges.parquet")
        circuit = {
            "task": "ioi",
            "model": "toy",
            "n_model_heads": 4,
            "heads": [{"layer": 1, "head": 0, "role": "name_mover", "position": "end", "effect": -0.3}],
            "edges": [],
        }
        (d / "circuit.json").write_text(json.dumps(circuit))
    _cache(seed / "compare", {k: _graph(v) for k, v in phases.items()})
    edge_changes(seed / "compare")
    measured = ("score_clean", "localization_drop", "localization_top_share")
    findings = pd.DataFrame(
        [
            {
                "measure": m,
                "mean": 1.0,
                "ci_low": 0.9,
                "ci_high": 1.1,
                "n_seeds": 1,
                "interval": "t",
                "clipped": False,
            }
            for m in measured
        ]
    )
    (root / "tables").mkdir()
    findings.to_parquet(root / "tables" / "findings.parquet")
    decide(findings, VerdictThresholds(), 1).to_parquet(root / "tables" / "verdicts.parquet")
    return root


def test_the_report_of_a_run_dir_draws_the_most_changed_edges(tmp_path):
    import pandas as pd

    from circuit_plasticity.api import render_report
    from circuit_plasticity.report.build import edge_change_figure

    run = _run_dir(tmp_path / "run", _hand_made_phases())
    html = render_report(run, {"task": "ioi"}, [0]).read_text()
    assert (run / "tables" / "edge_changes.parquet").is_file()
    start = html.index("the edges that changed most per phase (seed 0)")
    section = html[start : html.index("</section>", start)]
    assert "<img" in section and "the 10 edges whose EAP-IG score changed most" in section
    changes = pd.read_parquet(run / "tables" / "edge_changes.parquet")
    heads = pd.read_parquet(run / "tables" / "heads.parquet")
    assert edge_change_figure(changes, heads, 0).png[:4] == b"\x89PNG"
    assert edge_change_figure(changes.iloc[0:0], heads, 0).missing.startswith("No edge changes")
    assert edge_change_figure(None, heads, 0).png is None


def test_seed_pairs_compare_two_seeds_references_and_are_their_own_rows(tmp_path):
    """Two seeds' hand-made caches: the pair rows are the overlap of their base graphs and of
    their last clean graphs, named by both seeds, and as finding rows carry the pair prefix
    that keeps them out of findings_by_seed."""
    from circuit_plasticity.study.edge_tracking import SEED_PAIR_PREFIX, seed_pair_findings, seed_pair_rows

    one = _hand_made_phases()
    other = {k: v | {"a1.h0->logits": -1.0} for k, v in one.items()}  # a different reading
    _cache(tmp_path / "s0", {k: _graph(v) for k, v in one.items()})
    _cache(tmp_path / "s3", {k: _graph(v) for k, v in other.items()})
    dirs = {0: tmp_path / "s0", 3: tmp_path / "s3"}
    pairs = seed_pair_rows(dirs)
    assert [(r["seed_a"], r["seed_b"], r["which"]) for r in pairs] == [(0, 3, "base"), (0, 3, "clean")]
    for r, (a, b) in zip(pairs, [("base-0", "base-0"), ("clean-64", "clean-64")], strict=True):
        want = change_of(graph_overlap(_graph(one[a]), _graph(other[b])))
        assert {k: r[k] for k in want} == pytest.approx(want)
    rows = seed_pair_findings(dirs, pairs)
    assert rows.measure.str.startswith(SEED_PAIR_PREFIX).all() and len(rows) == 6
    assert rows.equals(seed_pair_findings(dirs))
