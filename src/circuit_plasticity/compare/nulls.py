"""Null distributions that hold importance fixed, and what a permutation test could have shown.

A set chosen because its members changed most will beat uniformly random sets whenever the
change touches the components that matter, which any task fine-tune does: a uniform null only
rediscovers importance. The matched null replaces every member by a component of the same kind
drawn from the `window` components nearest to it in the reference model's importance rank,
never one of the chosen set (a matched control set, disjoint from the tested one), so "the
poison concentrates in these components" is tested against "other components of the same
importance carry as much".

A test is only as good as what it could have said. `NullTest` keeps, beside the p-value:
- `p_floor`: the smallest p the test can give, 1 / (draws + 1) (the observed set above every
  draw). At or above alpha (after combining seeds) no outcome could pass: "not testable at
  this scale".
- `p_at_margin`: the p an observed value of (null mean + margin) would get. Below alpha the
  test had the power to see an excess of `margin`, so a p at or above alpha is evidence of
  absence ("no"); otherwise it is only absence of evidence ("unclear").
- `fixed`: the number of component kinds in which every draw holds the same components (the
  kind is exhausted, e.g. a set holding one of a model's two MLPs can only be matched by the
  other): the null cannot vary there, and the test says nothing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from circuit_plasticity.compare.stats import Interval, permutation_p

Head = tuple[int, int]


def _kind(c: Head) -> str:
    return "mlp" if c[1] < 0 else "head"


def importance_windows(
    pool: Sequence[Head], importance: dict[Head, float], chosen: Sequence[Head], window: int
) -> dict[Head, list[Head]]:
    """For each chosen component, the `window` components of `pool` of its kind nearest to it in
    |importance| rank (itself included when the pool holds it; fewer where the kind has fewer).
    Ties in rank distance go to the more important side."""
    out = {}
    for c in chosen:
        same = {x for x in pool if _kind(x) == _kind(c)} | {c}
        ranked = sorted(same, key=lambda x: (-abs(importance[x]), x))
        rank = {x: i for i, x in enumerate(ranked)}
        near = sorted((x for x in ranked if x in pool), key=lambda x: (abs(rank[x] - rank[c]), rank[x]))
        out[c] = near[:window]
    return out


def matched_draws(
    rng: random.Random,
    pool: Sequence[Head],
    importance: dict[Head, float],
    chosen: Sequence[Head],
    n: int,
    window: int,
) -> list[list[Head]]:
    """`n` sets, each member of `chosen` replaced by a draw from its importance window among the
    components of `pool` outside `chosen`, no component twice in a set (a member whose window
    is used up takes the nearest unused component of its kind; none left: the set is short)."""
    others = [x for x in pool if x not in set(chosen)]
    windows = importance_windows(others, importance, chosen, window)
    draws = []
    for _ in range(n):
        taken: list[Head] = []
        for c in chosen:
            free = [x for x in windows[c] if x not in taken]
            if not free:
                same = sorted(
                    (x for x in others if _kind(x) == _kind(c) and x not in taken),
                    key=lambda x: abs(abs(importance[x]) - abs(importance[c])),
                )
                free = same[:1]
            if free:
                taken.append(rng.choice(free))
        draws.append(taken)
    return draws


def fixed_kinds(draws: Sequence[Sequence[Head]], chosen: Sequence[Head]) -> int:
    """Kinds the chosen set holds in which every draw holds exactly the same components (none
    at all included: the kind has no other component to draw)."""
    out = 0
    for kind in ("head", "mlp"):
        if not any(_kind(c) == kind for c in chosen):
            continue
        seen = {frozenset(c for c in d if _kind(c) == kind) for d in draws}
        out += len(seen) == 1
    return out


@dataclass(frozen=True)
class NullTest:
    p: float
    p_floor: float
    p_at_margin: float
    fixed: int
    null_mean: float
    null_low: float
    null_high: float

    def rows(self, prefix: str) -> dict[str, Interval]:
        point = lambda v: Interval(float(v), float("nan"), float("nan"))  # noqa: E731
        return {
            f"{prefix}_p": point(self.p),
            f"{prefix}_p_floor": point(self.p_floor),
            f"{prefix}_p_at_margin": point(self.p_at_margin),
            f"{prefix}_null_fixed": point(self.fixed),
            f"{prefix}_null": Interval(self.null_mean, self.null_low, self.null_high),
        }


def null_test(observed: float, null: np.ndarray, margin: float, fixed: int = 0) -> NullTest:
    """Permutation p of `observed` against `null` (one value per draw), with its floor and its
    power at `margin` (module docstring)."""
    null = np.asarray(null, dtype=float)
    size = null.size
    low, high = np.percentile(null, [2.5, 97.5]) if size else (float("nan"), float("nan"))
    return NullTest(
        p=permutation_p(observed, null),
        p_floor=float(1 / (1 + size)),
        p_at_margin=permutation_p(float(null.mean()) + margin, null),
        fixed=fixed,
        null_mean=float(null.mean()),
        null_low=float(low),
        null_high=float(high),
    )
