"""Amplification as the paper means it: the base circuit's members do more of what they did.

Each component's role is read from the one head taxonomy (analysis/classes.py,
`component_roles`) in the base and in the fine-tuned model. A member keeps its role unless both
models give it a role and the roles differ (a name mover turned S-suppressor, a flipped sign);
a member that changed role is a new mechanism. A component that joined the circuit is
*recruited* when its role repeats one a base member holds (a backup becoming a name mover, the
paper's 10.10) and a *new mechanism* otherwise. The existing mechanism is the members that kept
their role plus the recruits.

Carrier shares of the base -> clean gain (the existing mechanism's outputs taken from the clean
model into the base, over the whole gain), held against: the rest of the model; and the share
a uniform rescaling of every component's direct effect would give the same set (its share of
the base model's direct effect): an existing mechanism that carries less than that is not what
grew. The same shares are reported for base -> control.
"""

from __future__ import annotations

import numpy as np

from circuit_plasticity.analysis.circuit import Circuit
from circuit_plasticity.analysis.classes import component_roles
from circuit_plasticity.analysis.heads import component_dla
from circuit_plasticity.analysis.hooks import component_labels
from circuit_plasticity.compare.evidence import MAIN, Method, PhaseRuns, patched_into, point, rows
from circuit_plasticity.compare.stats import Interval, as_numpy, boot_ratio, boot_stat, resample_index

Head = tuple[int, int]


def roles_of(runs: PhaseRuns, phase: str, scale: float) -> dict[Head, str | None]:
    key = ("roles", phase)
    if key not in runs.memo:
        runs.memo[key] = component_roles(runs.models[phase], runs.batch, scale)
    return runs.memo[key]


def mechanism_sets(
    runs: PhaseRuns, base_circuit: Circuit, tuned_circuit: Circuit | None, tuned: str
) -> dict[str, list[Head]]:
    """members, kept, changed (role), joined, recruited, new (mechanism), existing."""
    scale = abs(float(runs.s("base").mean()))
    base_roles, tuned_roles = roles_of(runs, "base", scale), roles_of(runs, tuned, scale)
    circuit_roles = {h.key: h.role for h in base_circuit.heads}
    tuned_circuit_roles = {h.key: h.role for h in tuned_circuit.heads} if tuned_circuit else {}
    members = sorted(base_circuit.head_set())
    changed = [
        m for m in members if base_roles.get(m) and tuned_roles.get(m) and base_roles[m] != tuned_roles[m]
    ]
    kept = [m for m in members if m not in changed]
    joined = sorted((tuned_circuit.head_set() if tuned_circuit else set()) - set(members))
    held = {base_roles.get(m) for m in members} | {circuit_roles.get(m) for m in members}
    held -= {None, "direct_effect", ""}
    recruited = [j for j in joined if (tuned_roles.get(j) or tuned_circuit_roles.get(j)) in held]
    return {
        "members": members,
        "kept": kept,
        "changed": changed,
        "joined": joined,
        "recruited": recruited,
        "new": [j for j in joined if j not in recruited],
        "existing": sorted(set(kept) | set(recruited)),
    }


def amplification_evidence(
    runs: PhaseRuns,
    base_circuit: Circuit,
    circuits: dict[str, Circuit],
    seed: int,
    method: Method = MAIN,
) -> tuple[dict[str, Interval], dict[str, list[Head]]]:
    """(measures, the base -> clean mechanism sets) for base -> clean and base -> control."""
    metric = method.metric
    labels = component_labels(runs.models["base"])
    index = resample_index(len(runs.batch), seed)
    base = runs.s("base", metric)
    dla = runs.memo.get("base_dla")
    if dla is None:
        dla = runs.memo["base_dla"] = as_numpy(component_dla(runs.models["base"], runs.batch))
    out: dict[str, Interval] = {}
    found: dict[str, list[Head]] = {}
    for tuned, suffix in (("clean", ""), ("control", "_control")):
        if tuned not in runs.models:
            continue
        sets = mechanism_sets(runs, base_circuit, circuits.get(tuned), tuned)
        if tuned == "clean":
            found = sets
        existing = sets["existing"]
        rest = [c for c in labels if c not in existing]
        others = [c for c in labels if c not in sets["members"]]
        gain = runs.s(tuned, metric) - base
        member, other, join, mine, theirs = patched_into(
            runs, "base", tuned, [sets["members"], others, sets["joined"], existing, rest], metric=metric
        )
        in_existing = np.array([c in existing for c in labels])
        out[f"gain{suffix}"] = boot_stat(lambda g: g, [gain], index)
        out[f"member_share{suffix}"] = boot_ratio(member - base, gain, index)
        out[f"nonmember_share{suffix}"] = boot_ratio(other - base, gain, index)
        out[f"joined_share{suffix}"] = boot_ratio(join - base, gain, index)
        out[f"existing_share{suffix}"] = boot_ratio(mine - base, gain, index)
        out[f"uniform_share{suffix}"] = boot_ratio(dla[:, in_existing].sum(1), dla.sum(1), index)
        if out[f"existing_share{suffix}"].applicable:
            out[f"existing_minus_rest{suffix}"] = boot_stat(
                lambda m, o, g: (m - o) / g, [mine - base, theirs - base, gain], index
            )
            out[f"existing_minus_uniform{suffix}"] = boot_stat(
                lambda m, g, d, t: m / g - d / t,
                [mine - base, gain, dla[:, in_existing].sum(1), dla.sum(1)],
                index,
            )
        else:
            out[f"existing_minus_rest{suffix}"] = out[f"existing_minus_uniform{suffix}"] = Interval.nan()
        for name in ("changed", "joined", "recruited", "new"):
            out[f"{name}{suffix}_count"] = point(len(sets[name]))
    return rows("amplification", out), found
