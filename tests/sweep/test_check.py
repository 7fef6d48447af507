"""The estimate's check within a time budget: the candidates, the choice under a fake cost model
(never a timing), the cells against an exact analyze of the same layers, one float pass per
batch, the record in results.json, the cone shares against hand-counted FLOPs, and the errors."""

from __future__ import annotations

import argparse
import math
import random

import pytest
import torch
from support.models import tiny_data, tiny_net
from torch import nn

import quantlens as ql
from quantlens.core.inputs import Inputs
from quantlens.engine.cost import cone_shares
from quantlens.engine.runner import ConeRunner
from quantlens.errors import QuantlensError
from quantlens.graph.capture import capture
from quantlens.report.insights import insights
from quantlens.sweep.check import Candidate, candidates, check_line, choose
from quantlens.sweep.estimate import estimate_sweep
from quantlens.sweep.results import SweepResult


def test_candidates_are_top_boundary_and_seeded_random():
    ranked = [7, 3, 9, 1, 0, 2, 8, 4, 6, 5]
    costs = {i: float(i) for i in ranked}
    c = candidates(ranked, 2, costs, seed=3)
    assert [(x.layer, x.why, x.rank) for x in c[:4]] == [(7, "top", 1), (3, "top", 2), (9, "boundary", 3), (1, "boundary", 4)]
    rand = c[4:]
    assert len(rand) == 2 and all(x.why == "random" and x.rank > 4 for x in rand)
    assert [x.layer for x in rand] == [x.layer for x in candidates(ranked, 2, costs, seed=3)[4:]]  # seeded
    assert all(x.cost_s == float(x.layer) for x in c)
    few = candidates([5, 6, 7], 2, {5: 1.0, 6: 1.0, 7: 1.0})  # fewer layers than 3k: each once
    assert [(x.layer, x.why) for x in few] == [(5, "top"), (6, "top"), (7, "boundary")]


def test_choose_worked_example():
    cands = [Candidate(0, "top", 1, 5.0), Candidate(1, "top", 2, 1.0), Candidate(2, "boundary", 3, 2.0),
             Candidate(3, "random", 7, 0.5), Candidate(4, "random", 9, 4.0)]
    # deciding queue 1 (1.0), 2 (2.0), 0 (5.0); random queue 3 (0.5), 4 (4.0); in turn, deciding first:
    # 1 (left 5.0), 3 (4.5), 2 (2.5), 4 does not fit -> random closed, 0 does not fit -> deciding closed
    assert [c.layer for c in choose(cands, 6.0)] == [1, 3, 2]
    assert [c.layer for c in choose(cands, math.inf)] == [1, 3, 2, 4, 0]
    assert choose(cands, 0.4) == [] and choose(cands, 0.0) == [] and choose(cands, float("nan")) == []
    assert [c.layer for c in choose(cands, 0.5)] == [3]  # a deciding cell that does not fit leaves room for random ones


@pytest.mark.parametrize("seed", range(20))
def test_choice_stays_within_budget_and_takes_cheapest_first(seed):
    rng = random.Random(seed)
    ranked = list(range(30))
    rng.shuffle(ranked)
    costs = {i: rng.choice([0.0, rng.uniform(0, 5), rng.uniform(0, 50)]) for i in ranked}
    cands = candidates(ranked, 5, costs, seed=seed)
    budget = rng.uniform(0, 60)
    taken = choose(cands, budget)
    assert sum(c.cost_s for c in taken) <= budget + 1e-12
    assert len({c.layer for c in taken}) == len(taken) and all(c in cands for c in taken)
    left = budget - sum(c.cost_s for c in taken)
    for deciding in (True, False):  # per queue: the cheapest prefix, and the next one did not fit
        q = sorted((c for c in cands if (c.why != "random") == deciding), key=lambda c: (c.cost_s, c.rank))
        got = [c for c in taken if (c.why != "random") == deciding]
        assert got == q[:len(got)]
        if len(got) < len(q):
            assert q[len(got)].cost_s > left


def _sweep(m, d, bits=(4,)):
    from quantlens.data.batches import iterate
    from quantlens.parallel import SweepRecipe
    from quantlens.sweep.api import make_config

    return SweepRecipe(m, next(iterate(d)), make_config(list(bits)), "kl", "cpu", None, None, "cone", None).build()


def test_fake_cost_model_picks_the_cells_and_they_equal_an_exact_analyze_of_those_layers():
    m, d = tiny_net(), tiny_data(n_batches=2, batch=8)
    sweep = _sweep(m, d, (4, 8))
    names = [l.name for l in sweep.runner.layers]
    free = {names.index(n) for n in ("b2", "pw", "fc2")}
    fake = lambda s, inputs: {i: (0.0 if i in free else math.inf) for i in s.layer_ids}  # noqa: E731
    r = estimate_sweep(sweep, d, k=3, shares=fake)
    info = r.extra["estimate"]
    checked = {c.layer for c in r.cells if c.samples > 0}
    cands = {c["layer"] for c in info["candidates"]}
    assert checked == {n for n in ("b2", "pw", "fc2") if n in cands} and info["checked_cells"] == len(checked)
    assert {c["layer"] for c in info["candidates"] if c["checked"]} == checked
    assert info["predicted_check_s"] == 0.0 and info["budget"] == 0.25
    assert all(c["checked"] == (c["cost_s"] == 0.0) for c in info["candidates"])
    exact = ql.analyze(m, d, w_bits=[4], metric="kl", layers=sorted(checked))  # the oracle: the exact sweep of those layers
    for name in checked:
        got, want = r.cell(name, 4), exact.cell(name, 4)
        assert got.degradation == pytest.approx(want.degradation, rel=1e-9) and got.noise == pytest.approx(want.noise, rel=1e-9)
        assert got.sqnr_db == pytest.approx(want.sqnr_db, rel=1e-9) and got.samples == want.samples
    assert all(math.isnan(c.degradation) for c in r.cells if c.layer not in checked or c.w_bits == 8)


def test_check_measures_all_its_cells_in_one_float_pass_per_batch(monkeypatch):
    m, d = tiny_net(), tiny_data(n_batches=3, batch=4)
    sweep = _sweep(m, d)
    calls = []
    real = ConeRunner.float_pass
    monkeypatch.setattr(ConeRunner, "float_pass", lambda self, inputs: calls.append(1) or real(self, inputs))
    r = estimate_sweep(sweep, d, k=2, budget=math.inf)
    assert r.extra["estimate"]["checked_cells"] == 6 and len(calls) == len(d)


def test_a_budget_too_small_for_any_cell_says_so():
    m, d = tiny_net(), tiny_data(n_batches=1, batch=4)
    sweep = _sweep(m, d)
    r = estimate_sweep(sweep, d, k=2, budget=1e-12, shares=lambda s, inputs: {i: 1.0 for i in s.layer_ids})
    info = r.extra["estimate"]
    assert info["checked_cells"] == 0 and math.isnan(info["spearman"]) and not info["trusted"]
    assert all(c.samples == 0 for c in r.cells) and info["candidate_cells"] == 6
    assert "too few cells for a Spearman" in check_line(info) and "raise --check-budget" in check_line(info)
    text = " ".join(i.text for i in insights(r, 4))
    assert "0 of 6 candidate cells" in text and "raise --check-budget" in text and "cannot be trusted" in text


def test_the_check_is_recorded_in_results_json(tmp_path):
    m, d = tiny_net(), tiny_data(n_batches=1, batch=8)
    r = ql.analyze(m, d, w_bits=[4], metric="kl", method=ql.Estimate(k=2, budget=math.inf))
    r.to_json(tmp_path / "results.json")
    info = SweepResult.from_json(tmp_path / "results.json").extra["estimate"]
    assert info["budget"] is None  # inf: no limit (JSON has no inf)
    assert [c["why"] for c in info["candidates"]] == ["top", "top", "boundary", "boundary", "random", "random"]
    assert all(c["checked"] for c in info["candidates"]) and info["checked_cells"] == 6
    assert {"budget_s", "predicted_check_s", "forward_s", "check_s", "estimate_s", "candidate_cells"} <= set(info)
    assert "6 of 6 candidate cells (2 top, 2 boundary, 2 random) with no time limit" in check_line(info)
    assert "6 of 6 candidate cells" in " ".join(i.text for i in insights(SweepResult.from_json(tmp_path / "results.json"), 4))


def test_cone_shares_against_hand_counted_work():
    """Linear(4, 8) -> ReLU -> Linear(8, 2) on one sample: work = FLOPs (2 m n k) + values written.
    linear0 2*4*8 + 8 = 72, relu 0 + 8 = 8, linear1 2*8*2 + 2 = 34: total 114."""
    g = capture(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval())
    s = cone_shares(g, Inputs((torch.randn(5, 4),)))  # batch 5: counted on its first sample
    assert s == {0: pytest.approx(1.0), 1: pytest.approx(34 / 114)}


def test_budget_errors():
    for bad in (0, -1, 0.0, float("nan"), "0.25", True, None):
        with pytest.raises(QuantlensError, match="budget"):
            ql.Estimate(budget=bad)
    m, d = tiny_net(), tiny_data(n_batches=1, batch=4)
    with pytest.raises(QuantlensError, match="budget must be a share of the estimate's time above 0"):
        estimate_sweep(_sweep(m, d), d, budget=0)
    assert ql.Estimate(budget=math.inf).budget == math.inf


def test_cli_check_budget_option_and_errors():
    from quantlens.cli.analyze import _method

    def args(**kw):
        base = {"estimate": False, "adaptive": False, "split_noise": False, "tolerance": None, "estimate_k": 5, "check_budget": None}
        return argparse.Namespace(**{**base, **kw})

    assert _method(args(estimate=True, check_budget=0.5)) == ql.Estimate(k=5, budget=0.5)
    assert _method(args(estimate=True)) == ql.Estimate(k=5, budget=0.25)
    assert _method(args(estimate=True, check_budget=math.inf)).budget == math.inf
    with pytest.raises(QuantlensError, match="--check-budget is for --estimate"):
        _method(args(check_budget=0.5))
    with pytest.raises(QuantlensError, match="--check-budget .* must be above 0"):
        _method(args(estimate=True, check_budget=0.0))
    with pytest.raises(QuantlensError, match="--check-budget .* must be above 0"):
        _method(args(estimate=True, check_budget=-2.0))


def _flop_counter_work(g, inputs):
    """The oracle: every node's FLOPs by torch's own FlopCounterMode, plus the values it writes."""
    from torch.utils import _pytree as pytree
    from torch.utils.flop_counter import FlopCounterMode

    from quantlens.core.numerics import analysis_mode
    from quantlens.engine.cost import one_sample

    work = {}

    class Counter(torch.fx.Interpreter):
        def run_node(self, n):
            with FlopCounterMode(display=False) as c:
                out = super().run_node(n)
            work[n.name] = float(c.get_total_flops()) + float(sum(t.numel() for t in pytree.tree_leaves(out)
                                                                  if isinstance(t, torch.Tensor)))
            return out

    with analysis_mode():
        Counter(g.gm).run(*g.flat(one_sample(inputs)))
    return {n.name: (0.0 if n.op in ("placeholder", "get_attr", "output") else work.get(n.name, 0.0)) for n in g.gm.graph.nodes}


@pytest.mark.parametrize("which", ["tiny_net", "tiny_lm", "tiny_llama"])
def test_node_work_equals_flop_counter_mode(which):
    """node_work counts FLOPs without FlopCounterMode (no torch._dynamo import): the same numbers,
    node by node, on convolutions (grouped, depthwise), matmuls, attention (SDPA) and elementwise ops."""
    from support.lm_models import llama_ids, tiny_llama, tiny_lm, token_data

    from quantlens.engine.cost import node_work

    if which == "tiny_net":
        m, x = tiny_net(), Inputs((tiny_data(n_batches=1, batch=3)[0][0],))
    elif which == "tiny_lm":
        m, x = tiny_lm(), Inputs((token_data(n_batches=1)[0][0],))
    else:
        pytest.importorskip("transformers")
        m, x = tiny_llama(), Inputs((), llama_ids(n=1)[0])
    g = capture(m, x)
    got, want = node_work(g, x), _flop_counter_work(g, x)
    assert got == want
    assert sum(got.values()) > sum(n.numel() for n in g.gm.parameters())  # some FLOPs were counted
