"""The report and CLI table of an LLM-sized sweep: the layout chosen from the data, the role x block
view first, estimated cells drawn as estimates (with the check), a filterable per-layer table, and
the CLI naming blocks and roles."""

from __future__ import annotations

import dataclasses
import io
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from support.report_helpers import (
    LLM_ROLES,
    llm_estimate_result,
    parse,
    plots,
    synthetic_result,
)

from quantlens.cli.common import print_summary, summary_table
from quantlens.core.roles import assign_roles
from quantlens.report import render_report
from quantlens.report.layout import (
    EstimateCheck,
    choose_layout,
    estimate_saturation,
    is_checked,
    layer_label,
)
from quantlens.report.roles import role_view, worst_roles
from quantlens.sweep.results import Cell, LayerInfo, SweepResult


def _exact_llm(blocks: int) -> SweepResult:
    """The LLM-shaped result with measured degradations in every cell and no estimate."""
    r = llm_estimate_result(blocks)
    cells = tuple(dataclasses.replace(c, degradation=c.estimate, estimate=float("nan"), samples=8) for c in r.cells)
    return dataclasses.replace(r, cells=cells, extra={}, engine="cone")


def _sections(html: str) -> list[str]:
    return [dict(a)["id"] for t, a in parse(html).tags if t == "section"]


# ---- the layout rule ------------------------------------------------------------------------


def test_layout_is_chosen_from_the_layers():
    assert choose_layout(llm_estimate_result(30)).kind == "blocks"  # 211 layers, 210 in blocks
    assert choose_layout(llm_estimate_result(30)).reason == "210 of 211 layers sit in 30 repeated blocks"
    small = choose_layout(_exact_llm(2))
    assert small.kind == "flat" and "15 layers" in small.reason
    assert choose_layout(synthetic_result()).kind == "flat"  # the CNN: no repeated blocks
    assert choose_layout(synthetic_result()).reason == "no repeated blocks"
    # many layers, few of them in blocks: flat
    names = [f"conv{i}" for i in range(60)] + [f"stage.{b}.conv" for b in range(10)]
    layers = tuple(LayerInfo(index=i, name=n, op="Conv2d", params=10) for i, n in enumerate(names))
    cells = tuple(Cell(layer=n, w_bits=4, a_bits=8, noise=0.0, sqnr_db=30.0, metric=0.9, degradation=0.0) for n in names)
    r = SweepResult("top1", True, 0.9, 10, layers, cells)
    lay = choose_layout(r)
    assert lay.kind == "flat" and lay.reason == "only 10 of 70 layers sit in repeated blocks"
    # a role-grouped sweep is never laid out by blocks
    assert choose_layout(dataclasses.replace(llm_estimate_result(30), extra={"group_by": "role"})).kind == "flat"


def test_layout_threshold_is_strictly_more_than_64_layers():
    assert len(llm_estimate_result(9).layers) == 64 and choose_layout(llm_estimate_result(9)).kind == "flat"
    assert len(llm_estimate_result(10).layers) == 71 and choose_layout(llm_estimate_result(10)).kind == "blocks"


def test_estimate_check_reads_the_stored_check():
    chk = EstimateCheck.of(llm_estimate_result(10))
    assert chk is not None and chk.column == "nvfp4" and chk.checked == 3 and chk.k == 2
    assert chk.agreement() == "checked on 3 measured cells at nvfp4: Spearman 0.85, top-2 overlap 50%"
    assert chk.short_unit() == "expected nll change per token"
    bad = dataclasses.replace(llm_estimate_result(10), extra={"estimate": {"k": 2, "check_bits": 4, "spearman": None,
                                                                         "topk_overlap": {"4": 1.0}, "trusted": False,
                                                                         "checked_cells": 1}})
    assert EstimateCheck.of(bad).agreement() == ("checked on 1 measured cells at 4 bits: no Spearman (too few cells), top-2 overlap "
                                                 "100% -- not trusted: run the exact sweep")
    assert EstimateCheck.of(synthetic_result()) is None


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0, 1000.0], [-5.0, 0.1, 0.2], list(np.linspace(-1, 7, 211)), [0.0, 0.0, 4.0]])
def test_estimate_saturation_is_the_95th_percentile_of_magnitudes(values):
    want = float(np.quantile(np.abs(values), 0.95))
    got = estimate_saturation(values + [float("nan"), None])
    assert got == pytest.approx(want if want > 0 else max(map(abs, values)))
    assert estimate_saturation([]) == 1.0 and estimate_saturation([0.0, float("nan")]) == 1.0


def test_layer_label_names_block_and_role():
    rmap = assign_roles(["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj", "lm_head"])
    assert layer_label(rmap, "model.layers.1.mlp.down_proj") == "block 1 mlp.down_proj"
    assert layer_label(rmap, "lm_head") == "lm_head"


# ---- the page -------------------------------------------------------------------------------


def test_llm_estimate_report_leads_with_roles_and_draws_every_estimate():
    r = llm_estimate_result(30)
    html = render_report(r)
    assert _sections(html)[:3] == ["summary", "roles", "layers"]
    figs = plots(html)
    assert "plot-profile" not in figs and "plot-heatmap" not in figs and "plot-activations" not in figs
    data, layout = figs["plot-roles"]
    heat = [t for t in data if t["type"] == "heatmap"]
    marks = [t for t in data if t["type"] == "scatter"]
    assert len(heat) == 2 and len(marks) == 1  # one outline trace: the checked cells are at nvfp4 only
    nv = heat[0]
    assert nv["visible"] is True and heat[1]["visible"] is False  # focus: nvfp4, the lowest effective bits
    # the oracle: z[role][block] = estimate of model.layers.{block}.{role} at nvfp4
    est = {(c.layer, c.format): c.estimate for c in r.cells}
    for i, role in enumerate(LLM_ROLES):
        for b in range(30):
            assert nv["z"][i][b] == pytest.approx(est[(f"model.layers.{b}.{role}", "nvfp4")])
    assert nv["y"] == LLM_ROLES and nv["x"] == [f"block {b}" for b in range(30)]
    want_sat = float(np.quantile([abs(est[(n, "nvfp4")]) for n in r.layer_names if n != "lm_head"], 0.95))
    assert nv["zmax"] == pytest.approx(want_sat) and nv["zmin"] == pytest.approx(-want_sat)
    assert "texttemplate" not in nv or not nv.get("text")  # 30 blocks: values on hover, not overlapping text
    # lm_head is checked but has no block: the outlines are the two checked layers inside blocks
    assert sorted(zip(marks[0]["x"], marks[0]["y"])) == [("block 3", "mlp.down_proj"), ("block 7", "self_attn.v_proj")]
    buttons = layout["updatemenus"][0]["buttons"]
    assert [b["args"][0]["visible"] for b in buttons] == [[True, True, False], [False, False, True]]
    text = "".join(parse(html).text)
    assert "checked on 3 measured cells at nvfp4: Spearman 0.85, top-2 overlap 50%" in text
    assert "expected nll change per token (nats)" in text
    # the worst roles by summed estimate (oracle: the role rows' sums)
    sums = {role: sum(est[(f"model.layers.{b}.{role}", "nvfp4")] for b in range(30)) for role in LLM_ROLES}
    top = sorted(sums, key=lambda k: -sums[k])[:5]
    assert [rl for rl, _ in worst_roles(r, "nvfp4", 5, by="estimate")] == top
    assert f"{top[0]} (est {sums[top[0]]:.3g})" in text


def test_llm_layers_table_has_block_role_estimate_and_a_filter():
    r = llm_estimate_result(30)
    html = render_report(r)
    m = re.search(r'<table id="layers-table"[^>]*>(.*?)</table>', html, re.DOTALL)
    assert m
    heads = re.findall(r"<th(?: [^>]*)?>(.*?)</th>", m.group(1))
    assert heads[:7] == ["#", "block", "role", "layer", "op", "kind", "params"]
    assert heads[7:11] == ["deg@nvfp4", "est@nvfp4", "deg@fp8-e4m3", "est@fp8-e4m3"]
    rows = re.findall(r"<tr>(.*?)</tr>", m.group(1).split("</thead>")[1])
    assert len(rows) == 211
    cells = [re.findall(r'<td[^>]*data-v="([^"]*)"[^>]*>(.*?)</td>', row) for row in rows]
    by = {c.layer: c for c in r.cells if c.format == "nvfp4"}
    for row in cells:
        name = row[3][1]
        c = by[name]
        blk, role = ("", name) if name == "lm_head" else (name.split(".")[2], ".".join(name.split(".")[3:]))
        assert row[1][1] == blk and row[2][1] == role
        assert float(row[8][0]) == pytest.approx(c.estimate) and row[8][1] == f"{c.estimate:.3g}"
        assert (row[7][1] == "-") == (not is_checked(c))
    t = parse(html)
    filt = [dict(a) for tag, a in t.tags if tag == "div" and dict(a).get("class") == "filter"]
    assert filt == [{"class": "filter", "data-for": "layers-table", "data-what": "layers"}]
    selects = [dict(a) for tag, a in t.tags if tag == "select"]
    assert [s["data-col"] for s in selects] == ["2", "1"]
    opts = re.findall(r'<option value="([^"]*)">', html)
    assert opts == [""] + LLM_ROLES + ["lm_head"] + [""] + [str(b) for b in range(30)]
    text = "".join(t.text)  # the summary names block and role, ranks by the estimate, adds a checked cell's measurement
    assert "lm_head (est +0.211; measured +0.422)" in text and "block 29 mlp.down_proj (est +0.21)" in text  # nll: the metric's units


def test_exact_llm_report_uses_the_degradation_and_keeps_the_colour_rule():
    r = _exact_llm(12)
    html = render_report(r)
    assert _sections(html)[:3] == ["summary", "roles", "layers"]
    nv = plots(html)["plot-roles"][0][0]
    assert nv["zmax"] == pytest.approx(0.05 * 3.0)  # 5% of |baseline|, the degradation's saturation
    assert nv["z"][6][3] == pytest.approx(next(c.degradation for c in r.cells if c.layer == "model.layers.3.mlp.down_proj"
                                               and c.format == "nvfp4"))
    assert not [t for t in plots(html)["plot-roles"][0] if t["type"] == "scatter"]
    assert "est@" not in html


def test_small_lm_and_cnn_keep_the_flat_layout():
    html = render_report(_exact_llm(3))  # 22 layers: flat figures, role view after the heatmap
    assert _sections(html)[:5] == ["summary", "per-layer", "heatmap", "roles", "weights"]
    assert 'class="filter"' not in html.split("</style>")[1]
    cnn = render_report(synthetic_result())
    assert _sections(cnn) == ["summary", "per-layer", "heatmap", "weights", "noise", "layers"]
    assert "<select" not in cnn


def test_flat_estimate_report_draws_the_estimates():
    r = llm_estimate_result(3)  # 22 layers, flat
    html = render_report(r)
    figs = plots(html)
    data, _ = figs["plot-heatmap"]
    est = {(c.layer, c.format): c.estimate for c in r.cells}
    z = data[0]["z"]
    for i, n in enumerate(r.layer_names):
        assert z[i] == pytest.approx([est[(n, "nvfp4")], est[(n, "fp8-e4m3")]])
    assert sorted(data[1]["y"]) == sorted(["model.layers.3.mlp.down_proj", "model.layers.7.self_attn.v_proj", "lm_head"][2:])
    bars = [t for t in figs["plot-profile"][0] if t["type"] == "bar"]
    assert bars[0]["y"] == pytest.approx([est[(n, "nvfp4")] for n in r.layer_names])
    assert bars[0]["marker"]["line"]["width"][-1] == 2 and bars[0]["marker"]["line"]["width"][0] == 0  # lm_head checked
    assert "-" not in [t for row in data[0]["text"] for t in row]


# ---- the CLI table --------------------------------------------------------------------------


def _text(result: SweepResult, width: int = 140) -> str:
    con = Console(width=width, record=True, file=io.StringIO(), highlight=False)
    print_summary(result, k=5, out=con)
    return con.export_text()


def test_cli_table_names_block_and_role_and_ranks_an_estimate_by_it():
    r = llm_estimate_result(30)
    con = Console(width=140, record=True, file=io.StringIO(), highlight=False)
    con.print(summary_table(r, 5, width=140))
    lines = con.export_text().splitlines()
    header = next(line for line in lines if line.lstrip().startswith("#"))
    assert header.split()[:4] == ["#", "block", "role", "op"] and "est@nvfp4" in header and "measured@nvfp4" in header
    assert "layer" not in header.split()
    rows = [line for line in lines if re.match(r"\s*\d\s", line)]
    want = sorted((c for c in r.cells if c.format == "nvfp4"), key=lambda c: -c.estimate)[:5]  # oracle: largest estimates
    assert [rw.split()[1:3] for rw in rows] == [["-", "lm_head"]] + [[c.layer.split(".")[2], ".".join(c.layer.split(".")[3:])]
                                                                     for c in want[1:]]
    # lm_head: checked; nll is its own unit, so the estimate prints signed like the measured column
    assert rows[0].split()[-2:] == [f"{want[0].estimate:+.4g}", f"{want[0].degradation:+.4g}"]
    assert rows[1].split()[-1] == "-"  # not measured
    assert "ranked by estimate (in nll units)" in " ".join(" ".join(lines).split())  # the title may wrap
    text = _text(r)
    sums = {role: sum(c.estimate for c in r.cells if c.format == "nvfp4" and c.layer.endswith(role)) for role in LLM_ROLES}
    best = max(sums, key=lambda k: sums[k])
    assert re.search(rf"1\s+{re.escape(best)}\s+{re.escape(f'{sums[best]:+.4g}')}", text) and "est@nvfp4" in text


def test_cli_table_of_an_exact_llm_names_blocks_and_a_small_one_names_layers():
    r = _exact_llm(12)
    con = Console(width=160, record=True, file=io.StringIO(), highlight=False)
    con.print(summary_table(r, 3, width=160))
    out = con.export_text()
    header = next(line for line in out.splitlines() if line.lstrip().startswith("#"))
    assert header.split()[:3] == ["#", "block", "role"] and "deg@nvfp4" in header and "deg@fp8-e4m3" in header
    worst = r.worst("nvfp4", 1)[0]  # the last block's down_proj... or lm_head
    assert worst.layer == "lm_head" and re.search(r"1\s+-\s+lm_head", out)
    small = _exact_llm(2)
    con = Console(width=160, record=True, file=io.StringIO(), highlight=False)
    con.print(summary_table(small, 3, width=160))
    assert next(line for line in con.export_text().splitlines() if line.lstrip().startswith("#")).split()[:2] == ["#", "layer"]


def test_role_view_carries_the_estimates():
    r = llm_estimate_result(10)
    v = role_view(r, "fp8-e4m3")
    assert v is not None and v.estimated
    assert v.estimates[6][3] == pytest.approx(next(c.estimate for c in r.cells if c.layer == "model.layers.3.mlp.down_proj"
                                                   and c.format == "fp8-e4m3"))
    assert math.isnan(v.total("mlp.down_proj")) and v.total("mlp.down_proj", estimate=True) > 0
    with pytest.raises(ValueError, match="by='noise'"):
        worst_roles(r, "nvfp4", by="noise")


def test_cli_estimate_of_a_16_block_lm_writes_the_llm_report(tmp_path, capsys):
    """End to end: ``quantlens analyze --estimate`` on a 65-layer tiny LM prints block and role and
    writes the blocks layout, its role view coloured by the stored estimates."""
    from quantlens.cli import main

    user = tmp_path / "lm16.py"
    user.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        import torch
        from support.lm_models import TinyLM, token_data

        def model():
            torch.manual_seed(0)
            return TinyLM(blocks=16).eval()

        def data():
            return token_data(2, 3, 12)
    """))
    out = tmp_path / "run"
    assert main(["analyze", "--model", f"{user}:model", "--data", f"{user}:data", "--metric", "nll", "--formats", "nvfp4,fp8-e4m3",
                 "--a-bits", "none", "--estimate", "--estimate-k", "2", "--check-budget", "inf", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.lstrip().startswith("# "))
    assert header.split()[:3] == ["#", "block", "role"] and "est@nvfp4" in header
    assert "estimate (expected nll change per token (nats))" in printed
    r = SweepResult.from_json(out / "results.json")
    html = (out / "report.html").read_text()
    assert _sections(html)[:3] == ["summary", "roles", "layers"]
    nv = plots(html)["plot-roles"][0][0]
    v = role_view(r, "nvfp4")
    assert v is not None and nv["z"] == [[pytest.approx(x) for x in row] for row in v.estimates]
    assert sum(is_checked(c) for c in r.cells) == 6  # no time limit: the top 2, the 2 below them, 2 random
