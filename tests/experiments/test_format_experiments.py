"""``additivity`` and ``fix`` over named formats (``--low nvfp4 --high fp8-e4m3``, ``fix --w-bits mxfp4``).

Oracles: a naive copy of the model whose every weight is replaced by ``quantlens.fake_quantize``
(padded) and run whole (weights only); the single-layer sweep cell for a configuration that
quantizes one layer (weights and activations in formats); one ``analyze`` of each fixed graph
for the fix loop's local trials.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from support.helpers import assert_close
from support.single_thread import one_thread  # noqa: F401  (module fixture: one intra-op thread)
from torch import nn

import quantlens as ql
from quantlens import QuantlensError
from quantlens.core.experiment import ExperimentSpec, parse_column
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.core.workload import Workload
from quantlens.experiments.additivity import AdditivityResult, run_additivity
from quantlens.experiments.fixloop import FixResult, applicable_fixes, fix_loop
from quantlens.fixes import FixContext, make_fix
from quantlens.network.measure import make_measurer
from quantlens.quant.padded import quantize_padded
from quantlens.quant.spec import QuantSpec
from quantlens.sweep.results import SweepResult


def _net() -> nn.Module:
    """No BatchNorm (the naive oracle quantizes the module's own weights): conv (27-value reduction:
    MX blocks padded), depthwise, 1x1, linear."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
                         nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


def _data(n=2, seed=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 10, 10, generator=g), None) for _ in range(n)]


def _naive_noise(model: nn.Module, data, fmt_of: dict[str, str]) -> float:
    """``mean_n ||y_n - y_q,n||^2`` with the named layers' weights in their formats, run whole."""
    q = copy.deepcopy(model)
    for name, fmt in fmt_of.items():
        mod = q.get_submodule(name)
        with torch.no_grad():
            mod.weight.copy_(quantize_padded(mod.weight.detach(), fmt, "weight"))
    tot, n = 0.0, 0
    with torch.no_grad():
        for x, _ in data:
            d = (model(x) - q(x)).double()
            tot += float((d ** 2).sum())
            n += x.shape[0]
    return tot / n


def test_the_spec_takes_formats_and_bit_widths():
    spec = ExperimentSpec(a_bits=None, granularity="per-group-16")
    assert spec.layer("NVFP4").weight.format == "nvfp4" and spec.layer("nvfp4").act is None
    assert spec.layer(4).weight.format is None and str(spec.layer(4).granularity) == "per-group-16"
    assert spec.format_column(4) == "int4-g16" and spec.format_column("mxfp4") == "mxfp4"
    assert spec.sweep_config(["nvfp4", 8]).formats == ("nvfp4", "int8-g16")
    assert spec.sweep_config([4, 8]).w_bits == (4, 8)
    w4a4 = ExperimentSpec(a_format="nvfp4")
    assert (w4a4.a_bits, w4a4.a_format, w4a4.layer("nvfp4").act.format) == (4, "nvfp4", "nvfp4")
    assert w4a4.sweep_config(["nvfp4"]).a_format == "nvfp4"
    assert ExperimentSpec(a_format="int6").a_bits == 6 and ExperimentSpec(a_format="none").a_bits is None
    assert parse_column("8") == 8 and parse_column("MXFP4") == "mxfp4"
    with pytest.raises(QuantlensError, match="unknown number format 'fp5'"):
        parse_column("fp5", "--low")
    with pytest.raises(QuantlensError, match="--low must be in 2..16"):
        parse_column(1, "--low")


def test_a_format_layer_survives_fixes_and_json():
    lq = ExperimentSpec(a_format="mxfp8").layer("nvfp4")
    cfg = QuantConfig((("a", lq),)).with_fix("mse", ["a"])
    assert cfg.layer("a").weight.format == "nvfp4" and cfg.layer("a").act.format == "mxfp8" and cfg.layer("a").fixes == ("mse",)
    back = QuantConfig.from_json(cfg.to_json())
    assert back == cfg
    d = LayerQuant(weight=QuantSpec(bits=4), act=QuantSpec(format="nvfp4", symmetric=False)).to_dict()
    assert d["a_format"] == "nvfp4" and LayerQuant.from_dict(d).act.format == "nvfp4" and LayerQuant.from_dict(d).w_bits == 4


def test_additivity_over_formats_measures_what_a_naive_whole_run_measures():
    model, data = _net(), _data()
    work = Workload(model, data, metric="mse")
    spec = ExperimentSpec(a_bits=None)
    r = run_additivity(work, low="mxfp4", high="fp8-e4m3", configs=3, seed=1, spec=spec)
    assert (r.low, r.high) == ("mxfp4", "fp8-e4m3")
    sweep = ql.analyze(model, data, config=spec.sweep_config(["mxfp4", "fp8-e4m3"]), metric="mse")
    names = sweep.layer_names
    for p in r.points:
        fmt_of = {n: "mxfp4" if n in p.low_bit_layers else "fp8-e4m3" for n in names}
        assert_close(p.measured_noise, _naive_noise(model, data, fmt_of), rel=1e-5, what="measured noise")
        assert_close(p.predicted_noise, sum(sweep.cell(n, f).noise for n, f in fmt_of.items()), rel=1e-9, what="predicted noise")
    again = AdditivityResult.from_json(r.to_json())
    assert (again.low, again.high) == ("mxfp4", "fp8-e4m3") and again.points == r.points
    with pytest.raises(QuantlensError, match="no cells at nvfp4"):
        run_additivity(work, low="nvfp4", high="fp8-e4m3", configs=2, spec=spec, sweep=sweep)
    with pytest.raises(QuantlensError, match="both nvfp4"):
        run_additivity(work, low="nvfp4", high="NVFP4", configs=2, spec=spec)


def test_one_layer_in_formats_weights_and_activations_equals_its_sweep_cell():
    """W4A4: the whole-network builder and the sweep engine agree on one quantized layer."""
    model, data = _net(), _data()
    spec = ExperimentSpec(a_format="nvfp4")
    sweep = ql.analyze(model, data, config=spec.sweep_config(["nvfp4"]), metric="mse")
    measure = make_measurer(Workload(model, data, metric="mse"))
    for name in sweep.layer_names:
        got = measure(QuantConfig(((name, spec.layer("nvfp4")),)))
        assert_close(got.noise, sweep.cell(name, "nvfp4").noise, rel=1e-5, abs_=1e-12, what=name)


def test_fix_loop_over_a_format_equals_one_analyze_per_fixed_graph():
    model, data = _net(), _data(3)
    calib = data[:2]
    spec = ExperimentSpec(a_bits=8)
    sweep = ql.analyze(model, data, config=spec.sweep_config(["mxfp4"]), metric="kl", calib=calib)
    result, measurer = fix_loop(Workload(model, data, calib, "kl"), sweep, w_bits="mxfp4", spec=spec, top=2)
    assert result.w_bits == "mxfp4" and dict(result.skipped).keys() == {"sawb"}
    assert {t.fix for t in result.trials} == {"mse", "mse_output", "percentile", "equalize", "bias_correction"}
    assert [r.method for r in result.rows][:2] == ["float", "naive"] and "global:sawb" not in [r.method for r in result.rows]
    naive = QuantConfig(tuple((n, spec.layer("mxfp4")) for n in measurer.names))
    for t in result.trials:
        ctx = FixContext(QuantConfig(((t.layer, naive.layer(t.layer)),)), measurer.calib, measurer.device)
        fixed = make_fix(t.fix, ctx).apply(measurer.graph, [t.layer])
        want = ql.analyze(fixed.gm, data, config=spec.sweep_config(["mxfp4"]), metric="kl", calib=calib,
                          reference=measurer.float_gm, layers=[t.layer]).cell(t.layer, "mxfp4")
        assert_close(t.degradation, want.degradation, rel=1e-6, abs_=1e-12, what=f"{t.layer}/{t.fix}")
    naive_row = measurer(naive)
    assert_close(result.row("naive").noise, naive_row.noise, rel=1e-9)
    d = json.loads(result.to_json())
    assert d["w_bits"] == d["format"] == "mxfp4" and "sawb" in d["skipped"]
    back = FixResult.from_json(result.to_json())
    assert back.w_bits == "mxfp4" and back.skipped == result.skipped and back.config == result.config


def test_fixes_that_do_not_apply_to_a_format_are_named():
    kept, skipped = applicable_fixes(["sawb", "mse", "equalize"], "nvfp4", global_rows=[("sawb",)])
    assert kept == ["mse", "equalize"] and set(skipped) == {"sawb"}
    assert applicable_fixes(["sawb"], 4)[1] == {}
    with pytest.raises(QuantlensError, match="none of the fixes applies to bf16 weights: mse: bf16 is a plain cast"):
        applicable_fixes(["mse"], "bf16")


def test_additivity_of_a_plan_draws_its_layers_at_their_planned_formats(tmp_path):
    from quantlens.cli import main

    model, data = _net(), _data()
    spec = ExperimentSpec(a_bits=None)
    names = [l.name for l in ql.analyze(model, data, config=spec.sweep_config(["nvfp4"]), metric="mse", layers=None).layers]
    planned = {names[0]: "mxfp4", names[1]: "nvfp4", names[3]: "int4-g16"}  # names[2] is not in the plan: always high
    plan = QuantConfig(tuple((n, spec.layer(f)) for n, f in planned.items()))
    r = run_additivity(Workload(model, data, metric="mse"), low=plan, high="fp8-e4m3", configs=3, seed=2, spec=spec)
    assert r.low == "plan" and r.high == "fp8-e4m3"
    for p in r.points:
        assert set(p.low_bit_layers) <= set(planned)
        fmt_of = {n: planned[n] if n in p.low_bit_layers else "fp8-e4m3" for n in names}
        assert_close(p.measured_noise, _naive_noise(model, data, fmt_of), rel=1e-5, what="measured noise")
    with pytest.raises(QuantlensError, match="the plan quantizes layer .* with per-channel weights, the experiment with per-tensor"):
        run_additivity(Workload(model, data, metric="mse"), low=QuantConfig(((names[0], ExperimentSpec(a_bits=None, granularity="per-channel").layer(4)),)),
                       high=8, configs=2, spec=spec)
    # the CLI takes the plan's quant_config.json as --low
    f = tmp_path / "net.py"
    f.write_text("import torch\nfrom torch import nn\n\n\ndef model():\n    torch.manual_seed(3)\n"
                 "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),\n"
                 "                         nn.Conv2d(16, 32, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()\n\n\n"
                 "def data():\n    g = torch.Generator().manual_seed(4)\n    return [(torch.randn(8, 3, 10, 10, generator=g), None) for _ in range(2)]\n")
    plan.to_json(tmp_path / "quant_config.json")
    assert main(["additivity", "--model", f"{f}:model", "--data", f"{f}:data", "--metric", "mse", "--a-bits", "none", "--low",
                 str(tmp_path / "quant_config.json"), "--high", "fp8-e4m3", "--configs", "3", "--seed", "2", "--no-progress",
                 "--out", str(tmp_path / "add")]) == 0
    cli = AdditivityResult.from_json(tmp_path / "add" / "additivity.json")
    assert cli.low == "plan" and [p.low_bit_layers for p in cli.points] == [p.low_bit_layers for p in r.points]


def test_fix_loop_over_a_plan_fixes_each_culprit_in_its_own_format():
    model, data = _net(), _data(3)
    calib = data[:2]
    spec = ExperimentSpec(a_bits=None)
    w = Workload(model, data, calib, "kl")
    names = make_measurer(w).names
    plan = QuantConfig(((names[0], spec.layer("nvfp4")), (names[1], spec.layer(4)), (names[2], spec.layer("mxfp4")),
                        (names[3], spec.layer("fp8-e4m3"))))  # names[4] float
    assert spec.plan_columns(plan, names) == {names[0]: "nvfp4", names[1]: 4, names[2]: "mxfp4", names[3]: "fp8-e4m3"}
    sweep = ql.analyze(model, data, config=spec.sweep_config(["nvfp4", 4, "mxfp4", "fp8-e4m3"]), metric="kl", calib=calib)
    result, measurer = fix_loop(w, sweep, spec=spec, config=plan, candidates=("sawb", "mse", "equalize"), top=4,
                                global_rows=[("sawb",), ("mse",)])
    assert result.w_bits == "plan" and result.skipped == ()  # sawb applies to the int4 layer
    key = {names[0]: "nvfp4", names[1]: "int4", names[2]: "mxfp4", names[3]: "fp8-e4m3"}
    ranked = sorted(names[:4], key=lambda n: -sweep.cell(n, key[n]).degradation)
    assert list(result.culprits) == [n for n in ranked if sweep.cell(n, key[n]).degradation > 0][:4]
    for t in result.trials:  # each culprit in its own format; sawb only where it applies
        assert t.fix != "sawb" or t.layer == names[1]
        # in a sweep over formats the plan's 4 bits is the int4 format: the fix clips for that format
        ctx = FixContext(QuantConfig(((t.layer, spec.layer(key[t.layer])),)), measurer.calib, measurer.device)
        fixed = make_fix(t.fix, ctx).apply(measurer.graph, [t.layer])
        want = ql.analyze(fixed.gm, data, config=spec.sweep_config([key[t.layer]]), metric="kl", calib=calib,
                          reference=measurer.float_gm, layers=[t.layer]).cell(t.layer, key[t.layer])
        assert_close(t.degradation, want.degradation, rel=1e-6, abs_=1e-12, what=f"{t.layer}/{t.fix}")
    naive = QuantConfig(tuple((n, spec.layer(k)) for n, k in key.items()))
    assert_close(result.row("naive").noise, measurer(naive).noise, rel=1e-9)
    assert_close(result.row("naive").noise, measurer(plan).noise, rel=1e-6)  # int4 per tensor: the format and the grid agree
    assert_close(result.row("global:sawb").noise, measurer(naive.with_fix("sawb", [names[1]])).noise, rel=1e-9)
    assert FixResult.from_json(result.to_json()).w_bits == "plan"


def test_cli_fix_over_several_formats_writes_one_table_per_format(tmp_path, capsys):
    """``quantlens fix --formats nvfp4,mxfp4``: one sweep over both; each format's fix loop equals the
    library's on that sweep, written to OUT/<format>/ with its export; the errors are one line."""
    from support.lm_models import lm_user_file, tiny_lm, token_data

    from quantlens.cli import main

    f = lm_user_file(tmp_path)
    base = ["fix", "--model", f"{f}:model", "--data", f"{f}:data", "--metric", "nll", "--a-bits", "none", "--no-progress"]
    assert main([*base, "--formats", "nvfp4,mxfp4", "--fixes", "mse,four-over-six", "--top", "1", "--out", str(tmp_path / "r")]) == 0
    sweep = SweepResult.from_json(tmp_path / "r" / "results.json")
    assert set(sweep.columns) == {"nvfp4", "mxfp4"}
    spec = ExperimentSpec(a_bits=None)
    for fmt in ("nvfp4", "mxfp4"):
        got = FixResult.from_json(tmp_path / "r" / fmt / "fix.json")
        want, _ = fix_loop(Workload(tiny_lm(), token_data(), None, "nll"), sweep, w_bits=fmt, spec=spec, candidates=("mse", "four-over-six"), top=1)
        assert got.w_bits == fmt and got.culprits == want.culprits and dict(got.skipped).keys() == dict(want.skipped).keys()
        assert [(r.method, r.metric) for r in got.rows] == [(r.method, r.metric) for r in want.rows]
        assert (tmp_path / "r" / fmt / "quant_config.json").is_file()
    assert "four-over-six" in dict(FixResult.from_json(tmp_path / "r" / "mxfp4" / "fix.json").skipped)
    capsys.readouterr()
    for extra, message in ((["--formats", "nvfp4", "--w-bits", "4"], "give --w-bits or --formats, not both"),
                           (["--formats", ","], "--formats is empty"),
                           (["--formats", "nvfp4,mxfp4", "--fixes", "four-over-six"], "none of the fixes applies to mxfp4 weights")):
        assert main([*base, *extra, "--out", str(tmp_path / "e")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
