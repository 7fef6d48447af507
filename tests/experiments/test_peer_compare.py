"""benchmarks.smollm_peer's comparison of two group scores: Spearman's rho and interval-separated pairs."""

from __future__ import annotations

import itertools

from benchmarks.smollm_peer import compare, spearman


def _pearson(a: list, b: list) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return num / (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5


def _naive_ranks(v: list) -> list:
    """Mean rank (0-based) of each value: count the smaller ones and half the equal others."""
    return [sum(w < x for w in v) + (sum(w == x for w in v) - 1) / 2 for x in v]


def test_spearman_matches_pearson_of_naive_ranks_with_ties() -> None:
    a = [0.3, 1.2, 1.2, 5.0, -2.0, 0.3, 7.5]
    b = [1.0, 3.0, 2.0, 9.0, 0.5, 0.5, 4.0]
    assert abs(spearman(a, b) - _pearson(_naive_ranks(a), _naive_ranks(b))) < 1e-12
    assert abs(spearman(a, a) - 1.0) < 1e-12
    assert abs(spearman(a, [-x for x in a]) + 1.0) < 1e-12


def test_compare_matches_groups_by_members_and_counts_separated_pairs() -> None:
    ours = {
        "members": {"b.q+k": ["b.q", "b.k"], "b.o": ["b.o"], "b.d": ["b.d"], "head": ["head"]},
        "cells": {
            "b.q+k": {"score": 10.0, "ci_low": 9.0, "ci_high": 11.0},
            "b.o": {"score": 5.0, "ci_low": 4.0, "ci_high": 6.0},
            "b.d": {"score": 5.5, "ci_low": 5.2, "ci_high": 5.8},
            "head": {"score": 1.0, "ci_low": 0.5, "ci_high": 1.5},
        },
    }
    peer = {
        "scores": {"x.qk": 20.0, "x.o": 12.0, "x.d": 11.0, "x.head": 2.0, "x.unknown": 3.0},
        "members": {"x.qk": ["b.k", "b.q"], "x.o": ["b.o"], "x.d": ["b.d"], "x.head": ["head"], "x.unknown": ["zz"]},
    }
    c = compare(peer, ours)
    assert c["groups_matched"] == 4  # x.unknown has no quantlens group
    cells = ours["cells"]
    names = ["b.q+k", "b.o", "b.d", "head"]
    sep = [(i, j) for i, j in itertools.combinations(names, 2)
           if cells[i]["ci_low"] > cells[j]["ci_high"] or cells[j]["ci_low"] > cells[i]["ci_high"]]
    assert c["pairs"] == 6 and c["pairs_separated"] == len(sep) == 5  # b.o and b.d overlap
    assert c["separated_pairs_same_order"] == 5
    assert abs(c["spearman"] - _pearson(_naive_ranks([10, 5, 5.5, 1]), _naive_ranks([20, 12, 11, 2]))) < 1e-12
