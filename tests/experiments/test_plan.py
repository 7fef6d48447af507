"""The mixed-precision planner: exact knapsack, budgets, and a measured plan on the demo."""

from __future__ import annotations

import itertools
import random

import pytest
from support.single_thread import one_thread  # noqa: F401  (module fixture: one intra-op thread)

from quantlens import QuantlensError
from quantlens.sweep.results import Cell, LayerInfo, SweepResult
from quantlens.experiments.plan import PlanResult, budget_capacity, mckp, plan_bits


def _brute(options, capacity):
    best = None
    for combo in itertools.product(*[range(len(g)) for g in options]):
        cost = sum(options[i][j][0] for i, j in enumerate(combo))
        if cost > capacity:
            continue
        value = sum(options[i][j][1] for i, j in enumerate(combo))
        if best is None or value < best[1] - 1e-12:
            best = (list(combo), value)
    return best


def test_mckp_is_exact_against_brute_force():
    rng = random.Random(0)
    for _ in range(40):
        options = [[(rng.randint(1, 9), rng.uniform(-0.1, 1.0)) for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(1, 5))]
        capacity = rng.randint(min(sum(min(c for c, _ in g) for g in options), 30), 30)
        choice, value = mckp(options, capacity)
        brute = _brute(options, capacity)
        assert value == pytest.approx(brute[1], abs=1e-9)
        assert sum(options[i][j][0] for i, j in enumerate(choice)) <= capacity


def test_mckp_infeasible_is_a_user_error():
    with pytest.raises(QuantlensError, match="budget is too small"):
        mckp([[(5, 0.0)], [(5, 0.0)]], 9)


def _sweep():
    # layer "big" is robust, "small" is sensitive; uniform 4 bits would hurt through "small"
    deg = {("big", 3): 0.01, ("big", 4): 0.0, ("big", 8): 0.0, ("small", 3): 0.3, ("small", 4): 0.2, ("small", 8): 0.0}
    cells = tuple(Cell(l, b, 8, noise=d + 0.001 * (8 - b), sqnr_db=30.0, metric=0.9 - d, degradation=d) for (l, b), d in deg.items())
    layers = (LayerInfo(0, "big", "Conv2d", 1000), LayerInfo(1, "small", "Conv2d", 100))
    return SweepResult("top1", True, 0.9, 100, layers, cells)


def test_plan_spends_bits_where_the_table_says():
    sw = _sweep()
    cap = budget_capacity(1100, 4.0, None)  # 4400 bits
    plan = {p.layer: p.w_bits for p in plan_bits(sw, cap)}
    assert plan == {"big": 3, "small": 8}  # 3000 + 800 <= 4400; uniform 4 would lose 0.2
    assert sum(p.predicted for p in plan_bits(sw, cap)) == pytest.approx(0.01)
    assert budget_capacity(1100, None, 550.0) == 4400


@pytest.mark.parametrize(
    "bits, nbytes, message",
    [
        (None, None, "exactly one of --budget"),
        (4.0, 100.0, "exactly one of --budget"),
        (-1.0, None, "--budget must be a positive"),
        (None, 0.0, "--budget-bytes must be positive"),
    ],
)
def test_budget_errors(bits, nbytes, message):
    with pytest.raises(QuantlensError, match=message):
        budget_capacity(100, bits, nbytes)


def test_budget_below_the_lowest_bits_is_refused():
    with pytest.raises(QuantlensError, match="below the smallest plan"):
        plan_bits(_sweep(), budget_capacity(1100, 2.0, None))


def test_plan_result_round_trips():
    sw = _sweep()
    layers = tuple(plan_bits(sw, 4400))
    r = PlanResult("top1", 0.9, 4.0, 4400, 8, layers, 0.01, 0.89, 4, 0.2, 0.19, 0.71)
    d = r.to_dict()
    assert d["schema"] == "quantlens/plan-v1" and d["w_bits"] == {"big": 3, "small": 8}
    assert d["uniform"]["w_bits"] == 4 and d["predicted"] == pytest.approx(0.01)
    assert PlanResult.from_json(r.to_json()) == r
