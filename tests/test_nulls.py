"""Importance-matched nulls and what a permutation test could have shown (compare/nulls.py),
held to answers worked out by hand."""

from __future__ import annotations

import random

import numpy as np
import pytest

from circuit_plasticity.compare.nulls import fixed_kinds, importance_windows, matched_draws, null_test

HEADS = [(0, h) for h in range(6)]
MLPS = [(0, -1), (1, -1)]
# importance of heads by |value|: (0,5) > (0,4) > ... > (0,0); MLPs far above
IMPORTANCE = {(0, h): float(h) for h in range(6)} | {(0, -1): -50.0, (1, -1): 40.0}


def test_windows_are_the_nearest_in_importance_rank_within_a_kind():
    w = importance_windows(HEADS + MLPS, IMPORTANCE, [(0, 5), (0, 2), (1, -1)], window=3)
    assert w[(0, 5)] == [(0, 5), (0, 4), (0, 3)]  # the most important: its window lies below it
    assert w[(0, 2)] == [(0, 2), (0, 3), (0, 1)]  # rank 3 of 6: itself, then one above, one below
    assert w[(1, -1)] == [(1, -1), (0, -1)]  # only two MLPs


def test_a_window_outside_the_pool_is_ranked_as_if_the_member_were_there():
    pool = [c for c in HEADS if c != (0, 2)]
    assert importance_windows(pool, IMPORTANCE, [(0, 2)], window=2)[(0, 2)] == [(0, 3), (0, 1)]


def test_draws_keep_kind_never_hold_the_chosen_set_and_come_from_the_windows():
    chosen = [(0, 5), (0, 4), (0, -1)]
    others = [c for c in HEADS + MLPS if c not in chosen]
    windows = importance_windows(others, IMPORTANCE, chosen, window=3)
    draws = matched_draws(random.Random(0), HEADS + MLPS, IMPORTANCE, chosen, 200, window=3)
    for d in draws:
        assert len(d) == 3 and len(set(d)) == 3 and not set(d) & set(chosen)
        assert d[2] == (1, -1)  # the only other MLP
        assert d[0] in windows[(0, 5)] and d[1] in windows[(0, 4)]
    assert windows[(0, 5)] == [(0, 3), (0, 2), (0, 1)]
    assert fixed_kinds(draws, chosen) == 1  # the MLP slot can only ever hold the other MLP
    narrow = matched_draws(random.Random(0), HEADS + MLPS, IMPORTANCE, chosen, 50, window=2)
    assert fixed_kinds(narrow, chosen) == 2  # both heads' windows are {(0,3), (0,2)}: always both
    heads_only = matched_draws(random.Random(0), HEADS, IMPORTANCE, [(0, 5), (0, 4)], 50, window=3)
    assert fixed_kinds(heads_only, [(0, 5), (0, 4)]) == 0
    both = matched_draws(random.Random(0), HEADS + MLPS, IMPORTANCE, [(0, -1), (1, -1), (0, 5)], 50, 3)
    assert all(c[1] >= 0 for d in both for c in d)  # no MLP left to draw
    assert fixed_kinds(both, [(0, -1), (1, -1), (0, 5)]) == 1


def test_null_test_by_hand():
    null = np.array([0.1, 0.2, 0.3, 0.4, 0.9])  # mean 0.38
    t = null_test(0.5, null, margin=0.1)
    assert t.p == pytest.approx((1 + 1) / 6)  # only 0.9 >= 0.5
    assert t.p_floor == pytest.approx(1 / 6)
    assert t.p_at_margin == pytest.approx((1 + 1) / 6)  # 0.48: only 0.9 reaches it
    assert t.null_mean == pytest.approx(0.38) and t.fixed == 0
    assert null_test(0.05, null, 0.5).p_at_margin == pytest.approx(2 / 6)  # 0.88: only 0.9 reaches it
    assert null_test(0.05, null, 0.6).p_at_margin == pytest.approx(1 / 6)  # 0.98: none
