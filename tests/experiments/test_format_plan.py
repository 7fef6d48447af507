"""Plans over formats: one format per layer under an effective-bits budget, fused siblings alike,
checked against a brute-force search written here and against a direct whole-network measurement."""

from __future__ import annotations

import inspect
import itertools
import json

import pytest
import torch
from torch import nn

import quantlens as ql
from quantlens import QuantlensError
from quantlens.experiments.format_plan import plan_formats, run_format_plan
from quantlens.graph.capture import capture
from quantlens.graph.layers import sibling_groups
from quantlens.quant.formats import get_format
from quantlens.stats.degradation import positive_part

FORMATS = ["nvfp4", "fp8-e4m3", "bf16"]


class Block(nn.Module):
    """norm -> q, k, v (siblings) -> o; norm -> gate, up (siblings) -> down; head."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.n1, self.n2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.gate, self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d), nn.Linear(2 * d, d)
        self.head = nn.Linear(d, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.n1(x)
        x = x + self.o(torch.sigmoid(self.q(h) * self.k(h)) * self.v(h))
        h = self.n2(x)
        x = x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))
        return self.head(x)


def _data(n: int = 2, b: int = 8) -> list:
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(b, 32, generator=g) * 2, None) for _ in range(n)]


def test_siblings_are_found_from_the_graph():
    groups = sibling_groups(capture(Block().eval()))
    assert ["q", "k", "v"] in groups and ["gate", "up"] in groups and ["o"] in groups and ["head"] in groups


def test_the_plan_is_the_brute_force_optimum_and_siblings_share_a_format():
    m, d = Block().eval(), _data()
    w = ql.Workload(m, d, metric="kl")
    sweep = ql.analyze(w, formats=FORMATS, a_bits=None)
    groups = sibling_groups(capture(m))
    params = {l.name: l.params for l in sweep.layers}
    total = sum(params.values())
    for budget in (5.0, 7.0, 10.0):
        plan = plan_formats(sweep, budget, groups)
        fmt = {p.layer: p.format for p in plan}
        assert all(len({fmt[n] for n in g}) == 1 for g in groups)
        assert sum(p.params * p.effective_bits for p in plan) <= budget * total + 1e-6
        best = None
        for choice in itertools.product(FORMATS, repeat=len(groups)):
            cost = sum(params[n] * get_format(f).effective_bits for g, f in zip(groups, choice) for n in g)
            if cost > budget * total + 1e-6:
                continue
            val = round(sum(positive_part(sweep.cell(n, f).degradation) for g, f in zip(groups, choice) for n in g), 9)
            best = val if best is None else min(best, val)
        got = round(sum(positive_part(p.predicted) for p in plan), 9)
        assert got == best, (budget, got, best)
    loose = plan_formats(sweep, 5.0, None)  # every layer alone may split a group
    assert len(loose) == len(plan)


def test_run_format_plan_measures_the_plan_and_each_format(tmp_path):
    m, d = Block().eval(), _data()
    w = ql.Workload(m, d, metric="kl")
    sweep = ql.analyze(w, formats=FORMATS, a_bits=8)
    r = run_format_plan(w, budget=7.0, formats=FORMATS, sweep=sweep)
    cfg = ql.QuantConfig(tuple((p.layer, ql.LayerQuant(weight=ql.QuantSpec(format=p.format), act=ql.QuantSpec(bits=8, symmetric=False)))
                               for p in r.layers))
    assert ql.measure(w, cfg).degradation == r.measured
    assert set(r.extra["uniform_formats"]) == set(FORMATS) and r.avg_bits <= 7.0
    assert r.extra["uniform_formats"]["bf16"]["measured"] <= r.extra["uniform_formats"]["nvfp4"]["measured"]
    r.to_json(tmp_path / "plan.json")
    raw = json.loads((tmp_path / "plan.json").read_text())
    assert raw["effective_bits"] == pytest.approx(r.avg_bits) and all("format" in l for l in raw["layers"])
    back = ql.PlanResult.from_json(tmp_path / "plan.json")
    assert [l.format for l in back.layers] == [l.format for l in r.layers] and back.avg_bits == pytest.approx(r.avg_bits)


def test_bad_budgets_and_sweeps_are_one_line():
    m, d = Block().eval(), _data()
    w = ql.Workload(m, d, metric="kl")
    sweep = ql.analyze(w, formats=FORMATS, a_bits=None)
    for budget, msg in ((4.0, "below the cheapest format \\(nvfp4, 4.5 bits"), (17.0, "above the dearest format \\(bf16, 16 bits")):
        with pytest.raises(QuantlensError, match=msg) as e:
            plan_formats(sweep, budget)
        assert "\n" not in str(e.value)
    with pytest.raises(QuantlensError, match="needs a sweep over formats"):
        plan_formats(ql.analyze(w, w_bits=[4, 8], a_bits=None), 6.0)
    with pytest.raises(QuantlensError, match="no cells in mxfp4"):
        plan_formats(sweep, 6.0, formats=["mxfp4", "bf16"])


def test_cli_plan_over_formats(tmp_path, capsys):
    from quantlens.cli import main

    f = tmp_path / "blk.py"
    f.write_text("import torch\nfrom torch import nn\n" + inspect.getsource(Block) +
                 "\ndef model():\n    return Block().eval()\n\ndef data():\n    g = torch.Generator().manual_seed(3)\n"
                 "    return [(torch.randn(8, 32, generator=g) * 2, None) for _ in range(2)]\n")
    rc = main(["plan", "--model", f"{f}:model", "--data", f"{f}:data", "--metric", "kl", "--formats", "nvfp4,fp8-e4m3,bf16",
               "--budget", "6", "--a-bits", "none", "--out", str(tmp_path / "p"), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "uniform nvfp4 (4.5 bits)" in text and "groups of fused siblings share a format" in text
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["effective_bits"] <= 6 and set(plan["formats"].values()) <= set(FORMATS)
    assert main(["plan", "--model", f"{f}:model", "--data", f"{f}:data", "--metric", "kl", "--formats", "nvfp4,bf16",
                 "--budget", "3", "--out", str(tmp_path / "q"), "--no-progress"]) == 2
    assert "below the cheapest format" in capsys.readouterr().err


def test_sibling_sweep_has_one_cell_per_fused_group_measured_whole():
    """``--group-by siblings``: q+k+v, o, gate+up, down, head; each cell is the whole-network measurement
    of its group quantized at once, and a group of one equals the layer sweep's cell."""
    from quantlens.core.layer_config import QuantConfig
    from quantlens.experiments.group_sweep import analyze_siblings, group_members
    from quantlens.network.measure import make_measurer

    m, d = Block().eval(), _data()
    w = ql.Workload(m, d, metric="kl")
    spec = ql.ExperimentSpec(a_bits=None)
    r = analyze_siblings(w, config=spec.sweep_config(["nvfp4", "fp8-e4m3"]))
    assert r.layer_names == ["q+k+v", "o", "gate+up", "down", "head"]
    assert group_members(r)["gate+up"] == ["gate", "up"] and r.extra["group_by"] == "siblings"
    assert {l.name: l.params for l in r.layers}["q+k+v"] == 3 * 32 * 32  # params counts weights
    measure = make_measurer(w)
    for name, members in group_members(r).items():
        direct = measure(QuantConfig(tuple((n, spec.layer("nvfp4")) for n in members)))
        assert r.cell(name, "nvfp4").degradation == direct.degradation and r.cell(name, "nvfp4").noise == direct.noise
    layers = ql.analyze(w, config=spec.sweep_config(["nvfp4"]))
    for n in ("o", "down", "head"):
        assert abs(r.cell(n, "nvfp4").noise - layers.cell(n, "nvfp4").noise) <= 1e-5 * layers.cell(n, "nvfp4").noise
    back = ql.SweepResult.from_json(r.to_json())
    assert group_members(back) == group_members(r)


def test_a_plan_over_sibling_cells_gives_every_layer_its_groups_format():
    from quantlens.core.layer_config import QuantConfig
    from quantlens.network.measure import make_measurer

    m, d = Block().eval(), _data()
    w = ql.Workload(m, d, metric="kl")
    spec = ql.ExperimentSpec(a_bits=None)
    p = run_format_plan(w, budget=6.0, formats=FORMATS, spec=spec, group_by="siblings")
    lf = p.extra["layer_formats"]
    assert set(lf) == {"q", "k", "v", "o", "gate", "up", "down", "head"}
    assert lf["q"] == lf["k"] == lf["v"] and lf["gate"] == lf["up"]
    assert {l.layer: l.format for l in p.layers}["q+k+v"] == lf["q"]
    direct = make_measurer(w)(QuantConfig(tuple((n, spec.layer(f)) for n, f in lf.items())))
    assert p.measured == direct.degradation
    with pytest.raises(QuantlensError, match="groups by layer or siblings"):
        run_format_plan(w, budget=6.0, formats=FORMATS, spec=spec, group_by="role")


def test_siblings_need_a_graph_and_the_cli_runs_them(tmp_path, capsys):
    from support.models import Untraceable

    from quantlens.cli import main
    from quantlens.experiments.group_sweep import analyze_siblings

    with pytest.raises(QuantlensError, match="--group-by siblings needs the model's graph") as e:
        analyze_siblings(ql.Workload(Untraceable(), [(torch.randn(2, 3, 8, 8), None)], metric="kl"),
                         config=ql.ExperimentSpec(a_bits=None).sweep_config(["nvfp4"]))
    assert "\n" not in str(e.value)
    f = tmp_path / "blk.py"
    f.write_text("import torch\nfrom torch import nn\n" + inspect.getsource(Block) +
                 "\ndef model():\n    return Block().eval()\n\ndef data():\n    g = torch.Generator().manual_seed(3)\n"
                 "    return [(torch.randn(8, 32, generator=g) * 2, None) for _ in range(2)]\n")
    base = ["--model", f"{f}:model", "--data", f"{f}:data", "--metric", "kl", "--no-progress"]
    assert main(["analyze", *base, "--formats", "nvfp4,fp8-e4m3", "--a-format", "none", "--group-by", "siblings",
                 "--out", str(tmp_path / "a")]) == 0
    assert "q+k+v" in capsys.readouterr().out
    assert main(["plan", *base, "--formats", "nvfp4,fp8-e4m3,bf16", "--budget", "6", "--a-bits", "none", "--group-by", "siblings",
                 "--out", str(tmp_path / "p")]) == 0
    cfg = json.loads((tmp_path / "p" / "quant_config.json").read_text())
    assert set(cfg["layers"]) == {"q", "k", "v", "o", "gate", "up", "down", "head"}
    assert main(["plan", *base, "--formats", "nvfp4,bf16", "--budget", "6", "--group-by", "role", "--out", str(tmp_path / "r")]) == 2
    assert "drop --group-by role" in capsys.readouterr().err
