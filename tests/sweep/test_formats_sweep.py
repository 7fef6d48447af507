"""Number formats as the sweep's axis: cells equal a naive loop written here (a copy of the model
with one layer's weight in the format, a full forward pass), on every engine and mode."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from support.models import tiny_data, tiny_net
from torch import nn

import quantlens as ql
from quantlens import QuantlensError

FORMATS = ["nvfp4", "mxfp4", "int4-g16", "fp8-e4m3", "mxfp8", "bf16"]


class MLP(nn.Module):
    """Linear layers only (nothing to fold), reduction axes 32 and 64 (whole MX/NVFP4 blocks)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(32, 64), nn.Linear(64, 32), nn.Linear(32, 10)
        with torch.no_grad():
            self.fc1.weight[3, 5] = 4.0  # an outlier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def _data(n: int = 3, b: int = 8) -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(b, 32, generator=g), torch.randint(0, 10, (b,), generator=g)) for _ in range(n)]


def _naive(model: nn.Module, data: list, layer: str, fmt: str) -> float:
    """mean_n ||y_n - y_q,n||^2 with ``layer``'s weight in ``fmt``, everything else float."""
    q = copy.deepcopy(model)
    mod = q.get_submodule(layer)
    with torch.no_grad():
        mod.weight.copy_(ql.fake_quantize(mod.weight, fmt))
        total, n = 0.0, 0
        for x, _ in data:
            d = (model(x) - q(x)).double()
            total += float((d * d).sum())
            n += x.shape[0]
    return total / n


def test_format_cells_equal_the_naive_loop_on_every_engine():
    m, d = MLP().eval(), _data()
    r = ql.analyze(m, d, formats=FORMATS, a_bits=None, metric="kl")
    assert r.is_format_sweep and r.w_bits == ["mxfp4", "nvfp4", "int4-g16", "fp8-e4m3", "mxfp8", "bf16"]  # by effective bits
    for engine in ("naive", "hooks"):
        other = ql.analyze(m, d, formats=FORMATS, a_bits=None, metric="kl", engine=engine)
        assert [(c.layer, c.format, c.noise, c.metric) for c in other.cells] == [(c.layer, c.format, c.noise, c.metric) for c in r.cells]
    for layer in ("fc1", "fc2", "fc3"):
        for fmt in FORMATS:
            c = r.cell(layer, fmt)
            want = _naive(m, d, layer, fmt)
            assert abs(c.noise - want) <= 1e-5 * max(want, 1e-12), (layer, fmt, c.noise, want)
    assert r.cell("fc1", "mxfp4").noise > r.cell("fc1", "mxfp8").noise > r.cell("fc1", "bf16").noise
    assert r.cell("fc1", "NVFP4").format == "nvfp4" and r.cell("fc1", "nvfp4").w_bits == 4


def test_format_sweep_round_trips_and_older_files_load(tmp_path):
    m, d = MLP().eval(), _data(2)
    r = ql.analyze(m, d, formats=["nvfp4", "fp8-e4m3"], a_bits=8, metric="kl")
    r.to_json(tmp_path / "results.json")
    raw = json.loads((tmp_path / "results.json").read_text())
    assert {c["format"] for c in raw["cells"]} == {"nvfp4", "fp8-e4m3"} and raw["config"]["formats"] == ["nvfp4", "fp8-e4m3"]
    back = ql.SweepResult.from_json(tmp_path / "results.json")
    assert back.w_bits == ["nvfp4", "fp8-e4m3"] and back.cell("fc2", "nvfp4") == r.cell("fc2", "nvfp4")
    # a bit-width sweep writes its integer format too, and a file without formats still loads
    b = ql.analyze(m, d, w_bits=[4], granularity="per-group-16", a_bits=None, metric="kl")
    assert b.cells[0].format == "int4-g16" and b.w_bits == [4]
    for c in raw["cells"]:
        del c["format"]
    del raw["config"]["formats"]
    old = ql.SweepResult.from_dict({**raw, "cells": [{**c, "w_bits": 4} for c in raw["cells"][:3]]})
    assert old.w_bits == [4]


def test_every_mode_runs_over_formats():
    m, d = MLP().eval(), _data()
    exact = ql.analyze(m, d, formats=["nvfp4", "fp8-e4m3"], a_bits=8, metric="kl")
    est = ql.analyze(m, d, formats=["nvfp4", "fp8-e4m3"], a_bits=8, metric="kl", method=ql.Estimate(k=1))
    assert est.extra["estimate"]["check_bits"] == "nvfp4" and est.w_bits == ["nvfp4", "fp8-e4m3"]
    chk = [c for c in est.cells if c.samples]
    assert chk and all(c.format == "nvfp4" and c.noise == exact.cell(c.layer, "nvfp4").noise for c in chk)
    split = ql.analyze(m, d, formats=["nvfp4"], a_bits=8, metric="kl", method=ql.Exact(split_noise=True))
    assert split.cell("fc1", "nvfp4").noise_source == "weights"
    ad = ql.analyze(m, d, formats=["nvfp4", "fp8-e4m3"], a_bits=8, metric="kl", method="adaptive")
    assert {c.format for c in ad.cells} == {"nvfp4", "fp8-e4m3"}
    from quantlens.report import render_report

    assert "nvfp4" in render_report(exact)


def test_a_block_that_does_not_divide_is_padded_with_one_warning():
    m, d = tiny_net(), tiny_data(n_batches=2, batch=4)  # a stem conv of 3 x 3 x 3 = 27 inputs
    with pytest.warns(ql.QuantlensWarning, match=r"nvfp4: \d+ layer\(s\) padded to whole blocks: stem \(its reduction axis has 27 values"):
        r = ql.analyze(m, d, formats=["nvfp4"], a_bits=None, metric="kl")
    w = torch.randn(4, 27)
    padded = torch.cat([w, torch.zeros(4, 5)], 1)
    assert torch.equal(ql.fake_quantize(w, "nvfp4"), ql.fake_quantize(padded, "nvfp4")[:, :27])
    assert r.cell("stem", "nvfp4").noise > 0


def test_bad_formats_are_one_line_errors():
    m, d = MLP().eval(), _data(2)
    cases = [
        (dict(formats=["nvfp5"]), "unknown number format 'nvfp5': known formats are int{b}"),
        (dict(formats=["nvfp4"], w_bits=[4]), "give formats or w_bits, not both"),
        (dict(formats=["nvfp4", "NVFP4"]), "duplicates"),
    ]
    for kw, msg in cases:
        with pytest.raises(QuantlensError, match=msg) as e:
            ql.analyze(m, d, metric="kl", **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(QuantlensError, match=r"layer stem: fp8-e4m3-block128 quantizes 2-D weights") as e:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ql.analyze(tiny_net(), tiny_data(n_batches=2, batch=4), formats=["fp8-e4m3-block128"], metric="kl")
    assert "\n" not in str(e.value)


def test_cli_formats_table_and_errors(tmp_path, capsys):
    from quantlens.cli import main
    from support.models import user_file

    mod = user_file(tmp_path, 2, batch=4)
    out = tmp_path / "run"
    rc = main(["analyze", "--model", f"{mod}:model", "--data", f"{mod}:data", "--metric", "kl", "--formats", "nvfp4,fp8-e4m3,mxfp8",
               "--a-bits", "none", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "worst layers in nvfp4 weights" in text and "deg@fp8-e4m3" in text
    assert json.loads((out / "results.json").read_text())["config"]["formats"] == ["nvfp4", "fp8-e4m3", "mxfp8"]
    for extra, msg in ((["--w-bits", "4"], "give --formats or --w-bits, not both"),
                       (["--granularity", "per-channel"], "--formats names its own blocks"),):
        rc = main(["analyze", "--model", f"{mod}:model", "--data", f"{mod}:data", "--formats", "nvfp4", "--out", str(tmp_path / "x"),
                   "--no-progress", *extra])
        assert rc == 2 and msg in capsys.readouterr().err
    assert main(["info"]) == 0 and "nvfp4: E2M1 elements" in capsys.readouterr().out


def _naive_act(model: nn.Sequential, data: list, index: int, wfmt: str, afmt: str) -> float:
    """The cell of Linear ``model[index]`` by hooks: its weight in ``wfmt``; its input and its output
    after its ReLU (or its own output, for the last layer) in ``afmt``, with fp8's and nvfp4's
    static scales from the float network's amax over ``data``."""
    from quantlens.quant.formats import ELEMENTS, cast_to_element, fake_quantize_activation, get_format

    f = get_format(afmt)
    after = index + 1 if index + 1 < len(model) and isinstance(model[index + 1], nn.ReLU) else index
    amax = {"in": 0.0, "out": 0.0}
    with torch.no_grad():
        for x, _ in data:
            h = x
            for k, mod in enumerate(model):
                if k == index:
                    amax["in"] = max(amax["in"], float(h.abs().max()))
                h = mod(h)
                if k == after:
                    amax["out"] = max(amax["out"], float(h.abs().max()))

    def q(t: torch.Tensor, which: str) -> torch.Tensor:
        if f.family == "fp8" and f.scope == "tensor":
            s = torch.tensor(amax[which] / ELEMENTS[f.element].max)
            return cast_to_element(t / s, ELEMENTS[f.element]) * s
        s2 = torch.tensor(amax[which] / 2688) if f.family == "nvfp4" else None
        k = t.shape[-1]
        pad = (-k) % f.block if f.scope == "block" else 0  # the policy: zeros to a whole last block
        return fake_quantize_activation(torch.nn.functional.pad(t, (0, pad)), f, global_scale=s2)[..., :k]

    qm = copy.deepcopy(model)
    with torch.no_grad():
        qm[index].weight.copy_(ql.fake_quantize(qm[index].weight, wfmt))
    qm[index].register_forward_pre_hook(lambda m, a: (q(a[0], "in"),))
    qm[after].register_forward_hook(lambda m, a, out: q(out, "out"))
    total, n = 0.0, 0
    with torch.no_grad():
        for x, _ in data:
            d = (model(x) - qm(x)).double()
            total += float((d * d).sum())
            n += x.shape[0]
    return total / n


@pytest.mark.parametrize("afmt", ["fp8-e4m3", "mxfp8", "mxfp4", "nvfp4"])
def test_activation_formats_equal_a_hooked_naive_loop(afmt):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    d = _data()
    r = ql.analyze(m, d, formats=["nvfp4", "fp8-e4m3"], a_format=afmt, metric="kl")
    assert r.config["a_format"] == afmt
    for name, index in (("0", 0), ("2", 2), ("4", 4)):
        for wfmt in ("nvfp4", "fp8-e4m3"):
            want = _naive_act(m, d, index, wfmt, afmt)
            got = r.cell(name, wfmt).noise
            assert abs(got - want) <= 1e-5 * want, (name, wfmt, afmt, got, want)
    naive = ql.analyze(m, d, formats=["nvfp4"], a_format=afmt, metric="kl", engine="naive")
    assert [c.noise for c in naive.cells] == [r.cell(c.layer, "nvfp4").noise for c in naive.cells]


def test_activation_format_errors_and_shorthands():
    m, d = MLP().eval(), _data(2)
    with pytest.raises(QuantlensError, match="give a_format or a_bits, not both"):
        ql.analyze(m, d, formats=["nvfp4"], a_format="nvfp4", a_bits=8, metric="kl")
    with pytest.raises(QuantlensError, match="unknown number format 'fp9'"):
        ql.analyze(m, d, formats=["nvfp4"], a_format="fp9", metric="kl")
    with pytest.raises(QuantlensError, match="--estimate models integer activations"):
        ql.analyze(m, d, formats=["nvfp4"], a_format="nvfp4", metric="kl", method="estimate")
    none = ql.analyze(m, d, formats=["nvfp4"], a_format="none", metric="kl")
    flt = ql.analyze(m, d, formats=["nvfp4"], a_bits=None, metric="kl")
    assert [c.noise for c in none.cells] == [c.noise for c in flt.cells]
    i8 = ql.analyze(m, d, formats=["nvfp4"], a_format="int8", metric="kl")
    b8 = ql.analyze(m, d, formats=["nvfp4"], a_bits=8, metric="kl")
    assert [c.noise for c in i8.cells] == [c.noise for c in b8.cells]


def test_role_sweep_and_resumable_cache_over_formats(tmp_path):
    from support.helpers import FailingData
    from support.lm_models import tiny_lm, token_data

    from quantlens.experiments.role_sweep import analyze_roles

    m, d = tiny_lm(), token_data(n_batches=3)
    cfg = ql.SweepConfig(w_bits=(), formats=("nvfp4", "fp8-e4m3"), a_bits=None)
    roles = analyze_roles(ql.Workload(m, d, metric="token_kl"), config=cfg)
    assert roles.w_bits == ["nvfp4", "fp8-e4m3"] and {c.format for c in roles.cells} == {"nvfp4", "fp8-e4m3"}
    assert all(c.degradation >= 0 for c in roles.cells)
    # a run that crashes after two batches resumes from its cache to the uninterrupted cells
    want = ql.analyze(m, d, formats=["nvfp4", "mxfp8"], a_format="mxfp8", metric="token_kl")
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="crash"):
        ql.analyze(m, FailingData(d, 2, 3), formats=["nvfp4", "mxfp8"], a_format="mxfp8", metric="token_kl",
                   cache=cache)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ql.analyze(m, d, formats=["nvfp4", "mxfp8"], a_format="mxfp8", metric="token_kl", cache=cache)
    assert [(c.layer, c.format, c.noise, c.metric) for c in got.cells] == [(c.layer, c.format, c.noise, c.metric) for c in want.cells]
