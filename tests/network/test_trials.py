"""The fix loop's local trials (one TrialRunner pass) equal one ``analyze`` of each fixed graph.

Oracle: the path ``quantlens fix`` took before the trial runner: for each (culprit, fix), the
fix applied to the culprit alone, then a whole single-layer sweep of the fixed float graph
(``analyze(fixed.gm, layers=[culprit])``: its own capture, calibration and float pass) against
the same reference. The trial runner must give the same cells, including for fixes that change
a layer upstream of the culprit (equalization of a pair) and for a bias a fix adds.
"""

from __future__ import annotations

import pytest
import torch
from support.helpers import assert_close
from support.lm_models import tiny_lm, token_data
from torch import nn

from quantlens import analyze
from quantlens.demo import culprit as demo_culprit
from quantlens.demo import digits as demo
from quantlens.experiments.fixloop import DEFAULT_FIXES, fix_loop
from quantlens.quant.spec import QuantSpec
from quantlens.core.sweep_config import SweepConfig
from quantlens.fixes import FixContext, make_fix
from quantlens.core.layer_config import QuantConfig
from quantlens.core.workload import RunOptions, Workload


def _net() -> nn.Module:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False),
                      nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(16, 10)).eval()
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.normal_(0, 0.2)
            mod.running_var.uniform_(0.5, 2)
    return m


def _cases():
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(8, 3, 12, 12, generator=g), None) for _ in range(3)]
    yield ("net", _net(), data, data[:2], 4, "kl")
    # a token metric reads the batch's inputs (no labels: the next tokens of input_ids)
    yield pytest.param(("lm", tiny_lm(), token_data(3), token_data(2, seed=1), 3, "nll"), marks=pytest.mark.slow)
    yield pytest.param(("culprit", demo_culprit.model(), demo.data()[:2], demo.calib(), 4, "top1"), marks=pytest.mark.slow)


@pytest.mark.parametrize("case", list(_cases()), ids=["net", "lm", "culprit"])
def test_trials_equal_one_analyze_per_fixed_graph(case):
    _, model, data, calib, bits, metric = case
    sweep = analyze(model, data, w_bits=[bits], a_bits=8, metric=metric, calib=calib)
    result, measurer = fix_loop(Workload(model, data, calib, metric), sweep, w_bits=bits, top=3)
    assert len(result.trials) == len(result.culprits) * len(DEFAULT_FIXES) and len(result.culprits) >= 2
    naive = QuantConfig.uniform(measurer.names, bits, 8)
    cfg = SweepConfig(w_bits=(bits,), a_bits=8, weight=QuantSpec(bits=bits))
    for t in result.trials:
        ctx = FixContext(QuantConfig(((t.layer, naive.layer(t.layer)),)), measurer.calib, measurer.device)
        fixed = make_fix(t.fix, ctx).apply(measurer.graph, [t.layer])
        want = analyze(fixed.gm, data, config=cfg, metric=metric, calib=calib, reference=measurer.float_gm, layers=[t.layer]).cell(t.layer, bits)
        assert_close(t.degradation, want.degradation, rel=1e-6, abs_=1e-12, what=f"{t.layer}/{t.fix} degradation")
        assert_close(t.noise, want.noise, rel=1e-6, abs_=1e-12, what=f"{t.layer}/{t.fix} noise")


def test_fix_additivity_and_plan_show_progress_with_an_eta(capsys):
    from support.models import tiny_data, tiny_net

    from quantlens.experiments.additivity import run_additivity
    from quantlens.experiments.plan import run_plan

    model, data = tiny_net(), tiny_data(n_batches=2)
    sweep = analyze(model, data, w_bits=[4, 8], metric="kl")
    capsys.readouterr()
    fix_loop(Workload(model, data, metric="kl"), sweep, options=RunOptions(progress=True), w_bits=4, candidates=("sawb",), top=1,
             global_rows=[("sawb",)])
    err = capsys.readouterr().err
    assert "fix" in err and "ETA" in err
    # 2 calibration + 2 data batches for the trials, then float, naive, global:sawb, local, local+global:sawb
    assert "9/9" in err
    run_additivity(Workload(model, data, metric="kl"), options=RunOptions(progress=True), configs=2, sweep=sweep)
    err = capsys.readouterr().err
    assert "additivity" in err and "3/3" in err and "ETA" in err
    run_plan(Workload(model, data, metric="kl"), options=RunOptions(progress=True), budget=6.0, w_bits=(4, 8), sweep=sweep)
    err = capsys.readouterr().err
    assert "plan" in err and "2/2" in err and "ETA" in err
