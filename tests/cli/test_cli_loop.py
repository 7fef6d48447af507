"""``quantlens fix``, ``additivity`` and ``plan`` end to end on the demo, and their user errors."""

from __future__ import annotations

import json
import textwrap

import pytest
from support.single_thread import one_thread_demo  # noqa: F401  (module fixture: one intra-op thread)

from quantlens.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("loop")
    (d / "user_loop.py").write_text(
        textwrap.dedent(
            """
            import torch
            from quantlens.demo import culprit as demo_culprit
            from quantlens.demo import digits as demo

            def model():
                return demo_culprit.model()

            def data():
                return demo.data()[:2]

            def calib():
                return demo.calib()[:1]

            def one_image():
                return [demo.calib()[0][0][:1]]

            class Untraceable(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.conv = torch.nn.Conv2d(1, 10, 3)

                def forward(self, x):
                    h = self.conv(x)
                    if h.mean() > -100:
                        h = h * 1.0
                    return h.mean((2, 3))

            def untraceable():
                return Untraceable()
            """
        )
    )
    mod = str(d / "user_loop.py")
    sweep_dir = d / "sweep"
    assert main(["analyze", "--model", f"{mod}:model", "--data", f"{mod}:data", "--calib", f"{mod}:calib",
                 "--w-bits", "4,8", "--out", str(sweep_dir), "--no-progress"]) == 0
    return d, mod, sweep_dir


def _args(mod: str, *extra: str) -> list[str]:
    return ["--model", f"{mod}:model", "--data", f"{mod}:data", "--calib", f"{mod}:calib", *extra]


@pytest.mark.slow
def test_fix_end_to_end(files, capsys):
    d, mod, sweep = files
    out = d / "fix"
    assert main(["fix", *_args(mod, "--w-bits", "8", "--results", str(sweep), "--fixes", "sawb,mse_output", "--top", "1", "--out", str(out))]) == 0
    fix = json.loads((out / "fix.json").read_text())
    assert fix["schema"] == "quantlens/fix-v1" and fix["metric"] == "top1"
    methods = [r["method"] for r in fix["rows"]]
    best = min((r for r in fix["rows"] if r["method"].startswith("global:")), key=lambda r: r["degradation"])["method"]
    assert methods[:5] == ["float", "naive", "global:sawb", "global:mse", "global:equalize+bias_correction"]
    assert methods[-2:] == ["local", "local+" + best]
    assert fix["rows"][-2]["fixes"] == fix["rows"][-1]["fixes"] == {"conv2": ["mse_output"]}
    assert set(fix["diagnosis"]) == {"conv2"} and "weight outliers" in fix["diagnosis"]["conv2"]["causes"]  # the planted outliers
    cfg = json.loads((out / "quant_config.json").read_text())
    assert cfg["schema"] == "quantlens/quant-config-v1" and cfg["layers"]["conv2"]["fixes"] == ["mse_output"]
    assert cfg["ranges"]["conv2"]["w_clip"] < 1.0
    from safetensors.torch import load_file

    w = load_file(str(out / "weights.safetensors"))
    assert {"conv2.weight", "conv2.bias", "conv2.weight_quantized", "conv2.weight_scale"} <= set(w)
    assert "Table 1" in capsys.readouterr().out


@pytest.mark.slow
def test_additivity_and_plan_end_to_end(files, capsys):
    d, mod, sweep = files
    out = d / "add"
    assert main(["additivity", *_args(mod, "--results", str(sweep), "--configs", "4", "--out", str(out))]) == 0
    a = json.loads((out / "additivity.json").read_text())
    assert a["schema"] == "quantlens/additivity-v1" and len(a["points"]) == 4
    assert {"pearson_r", "slope", "noise_pearson_r", "layers"} <= set(a)
    out = d / "plan"
    assert main(["plan", *_args(mod, "--results", str(sweep), "--w-bits", "4,8", "--budget", "5.0", "--out", str(out))]) == 0
    p = json.loads((out / "plan.json").read_text())
    assert p["schema"] == "quantlens/plan-v1" and set(p["w_bits"]) == {"conv1", "conv2", "conv3", "fc"}
    assert p["avg_bits"] <= 5.0 and p["uniform"]["w_bits"] == 4
    assert {"predicted", "measured"} <= set(p)
    cfg = json.loads((out / "quant_config.json").read_text())  # for `quantlens export`
    assert {n: l["w_bits"] for n, l in cfg["layers"].items()} == p["w_bits"] and cfg["measured_metric"] == p["measured_metric"]
    assert (out / "weights.safetensors").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["fix", "--w-bits", "1"], "--w-bits must be in 2..16"),
        (["fix", "--w-bits", "x"], "unknown number format 'x'"),
        (["fix", "--w-bits", "nvfp4", "--fixes", "sawb"], "none of the fixes applies to nvfp4 weights: sawb: SAWB's coefficients"),
        (["fix", "--a-format", "nvfp4", "--a-bits", "8"], "give --a-format or --a-bits, not both"),
        (["fix", "--w-bits", "4", "--config", "SWEEP"], "give --w-bits/--formats or --config, not both"),
        (["fix", "--w-bits", "nvfp4", "--results", "SWEEP"], "the sweep has no cells at nvfp4 (it has 4, 8 bits)"),
        (["additivity", "--low", "mxfp4", "--high", "MXFP4"], "--low and --high are both mxfp4: give two different formats"),
        (["fix", "--fixes", "magic"], "unknown fix 'magic'"),
        (["fix", "--fixes", "gptq", "--calib", "MODELS:one_image"], "fix 'gptq': the calibration data gives layer conv3 16 input rows"),
        (["fix", "--fixes", ","], "--fixes is empty"),
        (["fix", "--top", "0"], "--top must be at least 1"),
        (["fix", "--results", "/no/such/dir"], "does not exist"),
        (["fix", "--results", "DAMAGED"], "incomplete or damaged"),
        (["fix", "--w-bits", "6", "--results", "SWEEP"], "no cells at 6 bits"),
        (["fix", "--reference", "nomod_xyz:f"], "cannot import module 'nomod_xyz'"),
        (["fix", "--a-bits", "6", "--results", "SWEEP"], "the sweep used 8-bit activations"),
        (["fix", "--granularity", "per-channel", "--results", "SWEEP"], "the sweep used per-tensor weights"),
        (["plan", "--budget", "4", "--w-bits", "4,8", "--metric", "kl", "--results", "SWEEP"], "the sweep measured top1"),
        (["fix", "--model", "MODELS:untraceable"], "fixes need a model that torch.fx or torch.export can capture"),
        (["additivity", "--low", "4", "--high", "4"], "both 4"),
        (["additivity", "--configs", "1"], "--configs must be at least 2"),
        (["additivity", "--low", "3", "--results", "SWEEP"], "no cells at 3 bits"),
        (["plan"], "exactly one of --budget"),
        (["plan", "--budget", "4", "--budget-bytes", "10"], "exactly one of --budget"),
        (["plan", "--budget", "-2"], "--budget must be a positive"),
        (["plan", "--budget", "2.5", "--w-bits", "4,8", "--results", "SWEEP"], "below the smallest plan"),
    ],
)
def test_user_errors_are_one_line(files, capsys, args, message):
    d, mod, sweep = files
    damaged = d / "damaged.json"
    damaged.write_text('{"schema": "quantlens/sweep-v1", "metric": {"name": "top1"}}')
    cmd, rest = args[0], [a.replace("SWEEP", str(sweep)).replace("MODELS", mod).replace("DAMAGED", str(damaged)) for a in args[1:]]
    rc = main([cmd, *_args(mod, *rest, "--out", str(d / "err"))])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err, err
    assert err.count("\n") == 1
