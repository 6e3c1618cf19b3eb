"""Nodes or edges through training: an EAP-IG graph at tracked checkpoints of every phase, its
overlap with the phase's reference circuit (compare/edges.py), the reference circuit's
faithfulness in the checkpoint, and the per-seed finding rows against the control branch.

References: the base for the clean fine-tune; the final clean model for the poison, the retrain
and the control branch. The null of a phase is the control branch at the same number of steps
after the clean model (clean fine-tuning: as many control steps as the clean phase took; the
poison: its steps; the retrain: the poison's steps plus its own), the nearest tracked control
checkpoint where that one was not tracked.

Cache: seeds/seed-<s>/compare/edge_graphs/<phase>-<step>.safetensors per checkpoint (its dense
scores and the reference circuit's scores under edge patching), so a killed run resumes at the
next checkpoint; compare/edge_tracking.parquet (long: phase, step, reference, measure, percent,
value) is rebuilt from them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from circuit_plasticity.analysis.graph import Graph, mib_sizes
from circuit_plasticity.compare.edges import TRACK_PERCENTS, change_of, graph_overlap

IG_STEPS = 5  # as `analyze`
REFERENCE = {"clean": "base", "poisoned": "clean", "retrain": "clean", "control": "clean"}
FINDING_PHASES = ("clean", "poisoned", "retrain")


def nearest_step(steps, target: int) -> int:
    """The step of `steps` nearest `target`, the earlier on a tie: the one rule by which the
    control branch stands in at a phase's number of steps (graphs kept, changes, findings)."""
    return int(min(sorted(steps), key=lambda s: abs(s - target)))


def edge_checkpoints(checkpoints, every: int) -> list[tuple[str, int, Path]]:
    """The checkpoints that get a graph: always those the finding reads (each phase's last, and
    the control branch at the nulls' steps: the clean phase's, the poison's, the poison's plus
    the retrain's), and with `every` >= 1 also every `every`-th kept checkpoint of each phase."""
    by_phase: dict[str, list] = {}
    for phase, step, path in checkpoints:
        if phase in REFERENCE:
            by_phase.setdefault(phase, []).append((phase, step, Path(path)))
    last = {p: max(r[1] for r in rows) for p, rows in by_phase.items()}
    null_steps = {last.get("clean"), last.get("poisoned")}
    if "poisoned" in last and "retrain" in last:
        null_steps.add(last["poisoned"] + last["retrain"])
    control = sorted(r[1] for r in by_phase.get("control", []))
    wanted = {("control", nearest_step(control, n)) for n in null_steps if n and control}
    out = []
    for phase in ("clean", "poisoned", "retrain", "control"):  # the clean reference first
        rows = sorted(by_phase.get(phase, []), key=lambda r: r[1])
        out += [
            r
            for i, r in enumerate(rows)
            if (every >= 1 and (i + 1) % every == 0) or r[1] == last[phase] or (phase, r[1]) in wanted
        ]
    return out


def reference_masks(reference: Graph) -> list[torch.Tensor]:
    """Everything, nothing, and the reference's top circuits at TRACK_PERCENTS."""
    sizes = mib_sizes(reference.n_edges, TRACK_PERCENTS)
    return [reference.real.clone(), torch.zeros_like(reference.real), *[reference.top_n(n) for n in sizes]]


def _graph_of(
    model, batch, path: Path, reference: Graph | None, analysed: Path | None = None
) -> tuple[Graph, torch.Tensor | None]:
    """The checkpoint's EAP-IG graph and (given a reference) the mean scores of the reference's
    masks under edge patching in this model; cached at `path`. `analysed`: the phase analysis's
    edges.parquet of this very model on the same prompts (the same EAP-IG graph, not recomputed)."""
    from safetensors.torch import load_file, save_file

    from circuit_plasticity.analysis.attribution import edge_attribution, edge_patched_scores

    graph = Graph.from_model(model)
    if path.is_file():
        saved = load_file(str(path))
        graph.scores = saved["scores"]
        return graph, saved.get("reference_scores")
    if analysed is not None and analysed.is_file():
        table = pd.read_parquet(analysed)
        for name, score in zip(table.edge, table.score, strict=True):
            sender, slot = name.split("->")
            graph.scores[graph.forward_index(sender), graph.backward_index(slot)] = float(score)
    else:
        graph = edge_attribution(model, batch, ig_steps=IG_STEPS)
    tensors = {"scores": graph.scores.contiguous()}
    masks = reference_masks(reference if reference is not None else graph)
    patched = edge_patched_scores(model, batch, masks).mean(1).cpu()
    tensors["reference_scores"] = patched.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    layout = {
        "n_layers": graph.n_layers,
        "n_heads": graph.n_heads,
        "d_model": graph.d_model,
        "parallel_attn_mlp": int(graph.parallel_attn_mlp),
        "has_mlp": int(graph.has_mlp),
    }
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in layout.items()})
    tmp.replace(path)
    return graph, tensors["reference_scores"]


def _faithfulness_rows(patched: torch.Tensor) -> list[dict]:
    full, empty, *kept = patched.tolist()
    span = full - empty
    return [
        {
            "measure": "reference_faithfulness",
            "percent": float(p),
            "value": (v - empty) / span if abs(span) > 1e-9 else float("nan"),
        }
        for p, v in zip(TRACK_PERCENTS, kept, strict=True)
    ]


def track_edges(seed_models, base, batch, compare: Path, every: int = 0) -> pd.DataFrame | None:
    """compare/edge_tracking.parquet for one seed (None without tracked checkpoints)."""
    from circuit_plasticity.fileio import write_table
    from circuit_plasticity.models.load import load_model

    out = compare / "edge_tracking.parquet"
    if out.is_file():
        edge_changes(compare)  # a run tracked before the table existed gets it from the cache
        return pd.read_parquet(out)
    picked = edge_checkpoints(seed_models.checkpoints, every)
    if not picked:
        return None
    cache, analysis = compare / "edge_graphs", compare.parent / "analysis"
    finals = {
        p: Path(str(m)).resolve() for p, m in seed_models.phases().items() if isinstance(m, (str, Path))
    }

    def analysed(phase: str, path: Path | None) -> Path | None:
        """The phase analysis's graph when `path` is the model that analysis ran on."""
        same = phase == "base" or (path is not None and finals.get(phase) == Path(path).resolve())
        return analysis / phase / "edges.parquet" if same else None

    base_graph = _graph_of(base.model, batch, cache / "base-0.safetensors", None, analysed("base", None))
    graphs = {"base": base_graph[0]}
    rows = []
    clean_last = max((s for p, s, _ in picked if p == "clean"), default=None)
    for phase, step, path in picked:
        ref_name = REFERENCE[phase]
        if ref_name == "clean" and "clean" not in graphs:
            continue  # no clean checkpoint tracked: nothing to hold the later phases against
        reference = graphs[ref_name]
        model = load_model(str(path)).model
        target = cache / f"{phase}-{step}.safetensors"
        graph, patched = _graph_of(model, batch, target, reference, analysed(phase, path))
        if phase == "clean" and step == clean_last:
            graphs["clean"] = graph
        where = {"phase": phase, "step": step, "reference": ref_name}
        rows += [where | r for r in graph_overlap(reference, graph) + _faithfulness_rows(patched)]
    table = pd.DataFrame(rows)
    write_table(out, table)
    edge_changes(compare)
    return table


TOP_CHANGES = 20  # edges kept per phase in edge_changes.parquet (the report draws fewer)


def _cached(cache: Path) -> dict[str, dict[int, Path]]:
    """The cached graphs of `cache` by phase and step."""
    found: dict[str, dict[int, Path]] = {}
    for path in cache.glob("*.safetensors"):
        phase, _, step = path.stem.rpartition("-")
        if phase and step.isdigit():
            found.setdefault(phase, {})[int(step)] = path
    return found


def change_pairs(cache: Path) -> list[tuple[str, int, str, int]]:
    """(phase, step, reference, reference step) of each phase's last cached graph against the
    reference edge tracking holds it against (the base at step 0 for the clean fine-tune; the
    clean model's last graph for the others); the control at the poison's null step (its
    nearest cached one), the poison's null in `edge_findings`."""
    found = _cached(cache)
    if "base" not in found:
        return []
    last = {p: max(steps) for p, steps in found.items()}
    pairs = [("clean", last["clean"], "base", 0)] if "clean" in last else []
    if "clean" in last:
        pairs += [(p, last[p], "clean", last["clean"]) for p in ("poisoned", "retrain") if p in last]
        if "poisoned" in last and "control" in last:
            step = nearest_step(found["control"], last["poisoned"])
            pairs.append(("control", step, "clean", last["clean"]))
    return pairs


def edge_changes(compare: Path, n: int = TOP_CHANGES) -> pd.DataFrame | None:
    """compare/edge_changes.parquet: each phase's `n` edges whose EAP-IG score moved most from
    its reference (`change_pairs`, `compare.edges.top_changes`), from the cached graphs; made
    once (None without cached graphs). Columns: phase, step, reference, reference_step, rank,
    sender, receiver, input, reference_score, score, change."""
    from circuit_plasticity.compare.edges import top_changes
    from circuit_plasticity.fileio import write_table

    out = compare / "edge_changes.parquet"
    if out.is_file():
        return pd.read_parquet(out)
    cache = compare / "edge_graphs"
    pairs = change_pairs(cache)
    if not pairs:
        return None
    rows = []
    for phase, step, ref, ref_step in pairs:
        graph, reference = (
            load_graph(cache / f"{phase}-{step}.safetensors"),
            load_graph(cache / f"{ref}-{ref_step}.safetensors"),
        )
        where = {"phase": phase, "step": step, "reference": ref, "reference_step": ref_step}
        rows += [where | {"rank": i} | r for i, r in enumerate(top_changes(reference, graph, n))]
    table = pd.DataFrame(rows)
    write_table(out, table)
    return table


def _at(table: pd.DataFrame, phase: str, step: int | None = None) -> tuple[int, pd.DataFrame]:
    """The rows of `phase` at `step` (its nearest tracked step; None: the last)."""
    steps = table[table.phase == phase].step.unique()
    chosen = int(steps.max()) if step is None else nearest_step(steps, step)
    return chosen, table[(table.phase == phase) & (table.step == chosen)]


def edge_findings(table: pd.DataFrame | None) -> dict[str, float]:
    """Per-seed finding rows: for each phase at its last tracked checkpoint, the edge change and
    node change (1 - Jaccard, mean over the sizes), their difference, the control's at equal
    steps, and the excess over it; for the retrain, the share of the poison's edge change it
    undid (`edges_retrain_edges_restored`)."""
    if table is None or not len(table) or "control" not in set(table.phase):
        return {}
    out: dict[str, float] = {}
    offset = {"clean": 0, "poisoned": 0}
    finals = {}
    for phase in FINDING_PHASES:
        if phase not in set(table.phase):
            continue
        finals[phase] = _at(table, phase)[0]
    if "poisoned" in finals:
        offset["retrain"] = finals["poisoned"]
    for phase, step in finals.items():
        _, rows = _at(table, phase, step)
        null_step, null_rows = _at(table, "control", step + offset.get(phase, 0))
        mine, null = change_of(table=rows), change_of(table=null_rows)
        for key in ("edge_change", "node_change", "edge_minus_node"):
            out[f"edges_{phase}_{key}"] = mine[key]
            out[f"edges_{phase}_null_{key}"] = null[key]
        out[f"edges_{phase}_edge_excess"] = mine["edge_change"] - null["edge_change"]
        out[f"edges_{phase}_node_excess"] = mine["node_change"] - null["node_change"]
        out[f"edges_{phase}_excess"] = mine["edge_minus_node"] - null["edge_minus_node"]
        out[f"edges_{phase}_null_step"] = float(null_step)
        faith = rows[rows.measure == "reference_faithfulness"].value
        out[f"edges_{phase}_reference_faithfulness"] = float(faith.mean())
    if {"poisoned", "retrain"} <= set(finals):
        poisoned = change_of(table=_at(table, "poisoned")[1])["edge_change"]
        retrain = out["edges_retrain_edge_change"]
        out["edges_retrain_edges_restored"] = (
            (poisoned - retrain) / poisoned if poisoned > 1e-12 else float("nan")
        )
    return out


def seed_pair_rows(compare_dirs: dict[int, Path]) -> list[dict]:
    """The second null: overlaps between two seeds' references (their base graphs: the same
    model on other prompts; their clean graphs: runs that should agree), one row per pair."""

    def last_clean(cache: Path) -> Path | None:
        steps = _cached(cache).get("clean")
        return steps[max(steps)] if steps else None

    seeds = sorted(s for s, d in compare_dirs.items() if (d / "edge_graphs" / "base-0.safetensors").is_file())
    rows = []
    for i, a in enumerate(seeds):
        for b in seeds[i + 1 :]:
            for which in ("base", "clean"):
                pa, pb = (
                    (compare_dirs[s] / "edge_graphs" / "base-0.safetensors")
                    if which == "base"
                    else last_clean(compare_dirs[s] / "edge_graphs")
                    for s in (a, b)
                )
                if pa is None or pb is None:
                    continue
                pair = change_of(graph_overlap(load_graph(pa), load_graph(pb)))
                rows.append({"seed_a": a, "seed_b": b, "which": which, **pair})
    return rows


def load_graph(path: Path) -> Graph:
    """A cached checkpoint graph (its layout is in the file's metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        scores = f.get_tensor("scores")
    graph = Graph(
        int(meta["n_layers"]),
        int(meta["n_heads"]),
        int(meta["d_model"]),
        bool(int(meta["parallel_attn_mlp"])),
        bool(int(meta["has_mlp"])),
    )
    graph.scores = scores
    return graph


SEED_PAIR_PREFIX = "edges_seeds_"  # finding rows of a pair of seeds, not of one seed
PAIR_COLUMNS = ["seed_a", "seed_b", "which", "edge_change", "node_change", "edge_minus_node"]


def seed_pair_findings(compare_dirs: dict[int, Path], pairs: list[dict] | None = None) -> pd.DataFrame:
    """`seed_pair_rows` (or the given `pairs`) as finding rows (method main) for
    `combine_seeds`, one per pair in `seed` (the pair's first seed; so the interval is over
    pairs, which share seeds and are not independent). `judge` leaves them out of
    findings_by_seed: a pair is no seed; tables/edge_seed_pairs.parquet names both."""
    rows = []
    for r in seed_pair_rows(compare_dirs) if pairs is None else pairs:
        for key in ("edge_change", "node_change", "edge_minus_node"):
            rows.append(
                {
                    "seed": r["seed_a"],
                    "method": "main",
                    "measure": f"{SEED_PAIR_PREFIX}{r['which']}_{key}",
                    "value": r[key],
                    "ci_low": np.nan,
                    "ci_high": np.nan,
                }
            )
    return pd.DataFrame(rows)
