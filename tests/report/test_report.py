"""The report page of one sweep: sections, real numbers, escaping, extras, options, error paths."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from support.report_helpers import (
    EVIL,
    demo_result,
    parse,
    plots,
    synthetic_result,
    without_plotly_js,
    write_run,
)

from quantlens.cli import main
from quantlens.errors import QuantlensError
from quantlens.report import (
    ReportOptions,
    insights,
    load_result,
    render_report,
    write_report,
)
from quantlens.report.fmt import Units
from quantlens.report.safe import script_json

SECTIONS = ["summary", "per-layer", "heatmap", "weights", "noise", "layers"]
PLOTS = ["plot-profile", "plot-heatmap", "plot-weights", "plot-activations", "plot-noise"]


@pytest.fixture(scope="module")
def run(demo_model, demo_data, tmp_path_factory):
    """A real sweep of the demo, its directory and the report ``quantlens report DIR`` writes."""
    result = demo_result(demo_model, demo_data)
    d = write_run(result, tmp_path_factory.mktemp("demo-run"))
    assert main(["report", str(d)]) == 0
    return result, d, (d / "report.html").read_text()


def test_sections_and_plots_present(run):
    result, d, html = run
    assert html.startswith("<!DOCTYPE html>")
    for s in SECTIONS:
        assert f'<section id="{s}">' in html
    assert set(PLOTS) <= set(plots(html))
    for s in ("additivity", "fixes", "plan", "notes"):  # no extra files: no such sections
        assert f'<section id="{s}">' not in html


def test_self_contained(run):
    _, _, html = run
    assert html.count("<script>") == 1 + len(PLOTS) + 1  # plotly.js, one per plot, the table sorter
    rest = without_plotly_js(html)
    assert not re.search(r"<(script|img|iframe|link)[^>]*\s(src|href)=", rest, re.I)
    assert "@import" not in rest and "url(" not in rest
    assert "default-src 'none'" in html and "connect-src 'none'" in html


def test_summary_numbers_come_from_results(run):
    result, _, html = run
    u = Units.for_metric("top1")
    assert u.value(result.baseline) in html and f"{result.num_samples:,} samples" in html
    # the shipped demo at 4 bits: conv1 is significantly worse than float, conv2's +0.67% is not
    # (its interval contains 0), so the summary names conv1 alone and says how much data would tell
    c1, c2 = result.cell("conv1", 4), result.cell("conv2", 4)
    assert c1.ci_low > 0 and c2.ci_low <= 0 <= c2.ci_high and c2.degradation > 0
    significant = [c for c in result.at(4) if c.ci_low > 0]
    assert len(significant) == 1
    assert f"1 of 4 layers are significantly worse than float (95% interval above 0): conv1 {u.deg(c1.degradation, signed=True)}" in html
    assert "conv2, conv3 and fc cannot be told from zero on 450 samples; about " in html
    assert f"would tell whether conv2&#x27;s {u.deg(c2.degradation, signed=True)} is real" in html
    share = result.share(4)["conv1"]
    assert f"conv1 accounts for {100 * share:.0f}% of the summed 4-bit degradation" in html
    assert "cannot be told apart" not in html and "the data cannot rank them" not in html  # one significant layer: nothing to rank
    for b in result.w_bits:  # worst-layers table: the worst layer at every bit-width, if it degrades
        w = result.worst(b, 1)[0]
        if w.degradation > 0:
            assert f"{w.layer} ({u.deg(w.degradation, signed=True)})" in html


def test_figures_hold_the_results(run):
    result, _, html = run
    p = plots(html)
    names, bits, deg = result.table("degradation")
    data, layout = p["plot-heatmap"]
    z = data[0]["z"]
    assert data[0]["x"] == [f"{b} bits" for b in bits] and data[0]["y"] == names
    for row_z, row_d in zip(z, deg):
        assert row_z == pytest.approx([100 * v for v in row_d])
    assert data[0]["zmax"] == pytest.approx(5.0) and data[0]["text"][0][0] == f"{100 * deg[0][0]:.2f}"
    prof, layout = p["plot-profile"]
    assert len(prof) == 2 * len(bits) and [t["visible"] for t in prof[::2]] == [b == 4 for b in bits]
    sq = next(t for t in prof if t["name"] == "SQNR (4-bit)")
    assert sq["y"] == pytest.approx([c.sqnr_db for c in result.at(4)])
    assert [b["label"] for b in layout["updatemenus"][0]["buttons"]] == [f"{b} bits" for b in bits]
    noise, _ = p["plot-noise"]
    assert len(noise) == len(bits) and noise[0]["x"] == pytest.approx([c.noise for c in result.at(bits[0])])


def test_weight_histograms_and_ranges(run):
    result, _, html = run
    data, layout = plots(html)["plot-weights"]
    bars = [t for t in data if t["type"] == "bar"]
    assert [t["name"] for t in bars] == result.layer_names
    for t, l in zip(bars, result.layers):
        assert t["y"] == l.weight.hist_counts
    worst = result.worst(4, 1)[0]
    shown = [t for t in bars if t["visible"]]
    assert [t["name"] for t in shown] == [worst.layer]  # the culprit first
    xs = sorted(s["x0"] for s in layout["shapes"] if s["y1"] == 1)
    grid = [s["x0"] for s in layout["shapes"] if s["y1"] < 1]
    assert len(grid) == 16 and min(grid) == pytest.approx(-8 / 7 * worst.w_clip)  # the 4-bit levels
    w = result.layers[result.layer_names.index(worst.layer)].weight
    assert xs == pytest.approx(sorted([w.min, w.max, -worst.w_clip, worst.w_clip]))
    note = layout["annotations"][-1]["text"]
    assert f"{w.outliers_3sigma} of " in note and "beyond 3σ" in note and "mean shift at 4 bits" in note
    acts, _ = plots(html)["plot-activations"]
    inp = acts[0]
    assert inp["base"] == pytest.approx([l.input_range[0] for l in result.layers])


def test_table_is_sortable_and_complete(run):
    result, _, html = run
    table = html[html.index('id="layers-table"'):]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 1 + len(result.layers)
    assert "class=sortable" in html[html.index('<table id="layers-table"'):][:60] and "aria-sort" in html
    c = result.cell("conv1", 3)
    assert f'data-v="{c.degradation}"' in table


def test_escaping_of_model_names(tmp_path):
    r = synthetic_result(names=[EVIL, "dw", "</script><!--x", "fine"])
    r = type(r)(**{**r.__dict__, "model": "<script>alert(2)</script>", "metric_name": "<b>m</b>"})
    write_run(r, tmp_path)
    html = write_report(tmp_path).read_text()
    rest = without_plotly_js(html)
    assert EVIL not in html and "<script>alert(2)" not in html and "<b>m</b>" not in rest
    assert "&lt;img src=x onerror=alert(1)&gt;" in rest
    tags = parse(html)
    assert not [t for t, _ in tags.tags if t in ("img", "iframe", "object", "embed")]
    assert not [a for _, attrs in tags.tags for a, _ in attrs if a.lower().startswith("on")]
    assert EVIL in "".join(tags.text)  # shown as text
    for body in re.findall(r"<script>(.*?)</script>", rest, re.S):
        assert "</" not in body and "<!--" not in body
    assert plots(html)["plot-heatmap"][0][0]["y"][0] == "&lt;img src=x onerror=alert(1)&gt;"  # plotly.js shows it as text


def test_script_json_escapes():
    s = script_json({"a": "</script><!-- \u2028 & >", "n": float("nan"), "t": (1, 2)})
    assert "<" not in s and ">" not in s and "&" not in s and "\u2028" not in s
    assert json.loads(s) == {"a": "</script><!-- \u2028 & >", "n": None, "t": [1, 2]}


def test_insights_explain_why():
    r = synthetic_result()
    text = " ".join(i.text for i in insights(r, 4))
    assert "outl accounts for 63% of the summed 4-bit degradation" in text
    assert "weights have outliers (max|w| = 9.0 std, 40 of 1000 weights beyond 3 sigma)" in text
    assert "range is already clipped" in text  # w_clip < max|w| for that layer
    assert "0.30 std (a depthwise layer: the bias shift of section 4.4)" in text and "bias correction" in text
    assert "input range [-20, 20] is 36x the median layer's" in text
    causes = {i.layer for i in insights(r, 4) if i.kind == "cause"}
    assert causes == {"outl", "dw", "wide"}
    assert "from 8 bits up" in text


def test_insights_when_nothing_degrades():
    r = synthetic_result()
    text = " ".join(i.text for i in insights(r, 8))
    assert "At 8 bits no layer alone costs more than 0.10%" in text


def test_options_saturate_and_bits(tmp_path, capsys):
    r = synthetic_result()
    write_run(r, tmp_path)
    assert main(["report", str(tmp_path), "--saturate", "0.02", "--bits", "8", "--out", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert plots(html)["plot-heatmap"][0][0]["zmax"] == pytest.approx(2.0)
    assert "What to do next (8-bit weights)" in html
    assert ReportOptions().saturation("kl", 2.0) == pytest.approx(0.1)
    with pytest.raises(QuantlensError, match="--saturate"):
        ReportOptions(saturate=-1)
    assert main(["report", str(tmp_path), "--bits", "5"]) == 2
    assert "--bits 5: the results have [3, 4, 8]" in capsys.readouterr().err


def test_extras_rendered_from_fixtures(tmp_path):
    """Hand-written files in the owners' shapes; the fit of additivity, the plan's average bits and
    predicted degradation are the owners' (derived from the points and the layers, not read back)."""
    r = synthetic_result()
    write_run(r, tmp_path)
    pred, meas = [0.012, 0.02, 0.03], [0.014, 0.019, 0.034]
    (tmp_path / "additivity.json").write_text(json.dumps({
        "schema": "quantlens/additivity-v1", "low": 4, "high": 8, "flagged": ["dw"],
        "points": [{"low_bit_layers": ["outl", EVIL], "predicted": 0.012, "measured": 0.014},
                   {"low_bit_layers": ["dw"], "predicted": 0.02, "measured": 0.019},
                   {"low_bit_layers": ["wide"], "predicted": 0.03, "measured": 0.034}]}))
    r_want, slope_want = np.corrcoef(pred, meas)[0, 1], np.polyfit(pred, meas, 1)[0]  # independent oracle
    (tmp_path / "fix.json").write_text(json.dumps({
        "schema": "quantlens/fix-v1", "metric": "top1", "w_bits": 4, "rows": [
            {"method": "float", "metric": 0.9, "degradation": 0.0, "sqnr_db": None}, {"method": "naive", "metric": 0.8},
            {"method": "global:sawb", "metric": 0.75, "degradation": 0.15, "sqnr_db": 10.4},
            {"method": "local", "fixes": {"outl": ["sawb"]}, "metric": 0.88}],
        "trials": [{"layer": "outl", "fix": "sawb", "degradation": 0.01, "naive_degradation": 0.06, "kept": True},
                   {"layer": "outl", "fix": "mse", "degradation": 0.07, "naive_degradation": 0.06, "kept": False}]}))
    (tmp_path / "plan.json").write_text(json.dumps({
        "schema": "quantlens/plan-v1", "layers": [{"layer": n, "params": 1000, "w_bits": b, "predicted": d, "noise": 0.1}
                                                  for n, b, d in [("outl", 8, 0.001), ("dw", 6, 0.002), ("wide", 4, 0.003), ("fine", 4, 0.004)]],
        "measured": 0.012, "budget": {"avg_bits": 5.0, "bits": 20000},
        "uniform": {"w_bits": 5, "predicted": 0.03, "measured": 0.035}}))
    html = write_report(tmp_path).read_text()
    for s in ("additivity", "fixes", "plan"):
        assert f'<section id="{s}">' in html
    data, layout = plots(html)["plot-additivity"]
    assert data[0]["x"] == data[0]["y"]  # the y = x line
    assert data[1]["x"] == pytest.approx([1.2, 2.0, 3.0]) and data[1]["y"] == pytest.approx([1.4, 1.9, 3.4])
    assert f"Pearson r = {r_want:.3f}, slope = {slope_want:.2f}" in layout["title"]["text"]
    assert "mean shifts most under quantization (section 4.4): dw." in html
    fix = html[html.index('id="fix-table"'):]
    assert "global:sawb" in fix and "75.00%" in fix and "+8.00%" in fix and "outl: sawb" in fix and "10.4" in fix
    trials = html[html.index('id="fix-trials"'):]
    trials = trials[: trials.index("</table>")]
    assert trials.count("<tr>") == 3 and "kept" in trials and "1.00%" in trials
    plan = html[html.index('id="plan-table"'):]
    assert "1.00%" in plan and "1.20%" in plan and "3.50%" in plan and "5.50" in plan
    assert "(budget 5)" in plots(html)["plot-plan"][1]["title"]["text"]
    assert plots(html)["plot-plan"][0][0]["y"] == [8, 6, 4, 4]
    assert EVIL not in html
    # the summary says what the follow-ups measured (naive 10%, local 2%: 80% recovered; best global 15%)
    summary = html[html.index('<section id="summary">'):html.index('<section id="per-layer">')]
    assert "naive costs 10.00%; the local fixes (outl: sawb) leave 2.00%, recovering 80% of it" in summary
    assert "the best fix applied to every layer (sawb) leaves 15.00%" in summary
    assert f"Pearson r = {r_want:.3f}, slope {slope_want:.2f}; single-layer degradations add up" in summary
    assert "5.50 average weight bits, predicted 1.00%, measured 1.20%; uniform 5 bits measured 3.50%" in summary


def test_extras_damaged_or_other_shape(tmp_path):
    write_run(synthetic_result(), tmp_path)
    (tmp_path / "additivity.json").write_text("{not json")
    (tmp_path / "fix.json").write_text(json.dumps({"schema": "quantlens/other", "rows": []}))
    (tmp_path / "plan.json").write_text(json.dumps({"layers": [{"layer": "outl", "bits": 6}, {"name": "dw", "w_bits": 4}]}))
    html = write_report(tmp_path).read_text()
    assert '<section id="additivity">' not in html and '<section id="fixes">' not in html
    assert "additivity.json could not be read" in html and "fix.json could not be read" in html
    assert plots(html)["plot-plan"][0][0]["y"] == [6, 4]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist: run `quantlens analyze"),
        ("{oops", "is not valid JSON"),
        ('{"schema": "something/else"}', "not a quantlens sweep result"),
        ('{"schema": "quantlens/sweep-v1", "metric": {"name": "top1"}}', "incomplete or damaged"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_bad_results_one_line_error(tmp_path, capsys, content, message):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_out_is_a_directory(tmp_path, capsys):
    write_run(synthetic_result(), tmp_path)
    (tmp_path / "sub").mkdir()
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "sub")]) == 2
    assert "is a directory: give a file name" in capsys.readouterr().err
    with pytest.raises(QuantlensError):
        load_result(tmp_path / "sub")


def test_nan_cells_render(tmp_path):
    r = synthetic_result()
    cells = tuple(type(c)(**{**c.__dict__, "sqnr_db": math.inf, "mean_shift": math.nan}) if c.layer == "fine" else c for c in r.cells)
    html = render_report(type(r)(**{**r.__dict__, "cells": cells}))
    p = plots(html)  # strict JSON: NaN/Infinity would raise
    assert set(PLOTS) <= set(p)
    assert p["plot-profile"][0][3]["y"][3] is None  # SQNR at 4 bits of "fine": a gap, not Infinity


def test_demo_and_analyze_write_the_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--w-bits", "4,8", "--no-progress"]) == 0
    html = (out / "report.html").read_text()
    assert '<section id="heatmap">' in html and "quantlens.demo:model" in html
    out2 = tmp_path / "an"
    assert main(["analyze", "--model", "quantlens.demo:model", "--data", "quantlens.demo:data", "--w-bits", "4",
                 "--out", str(out2), "--no-progress"]) == 0
    assert '<section id="summary">' in (out2 / "report.html").read_text()


def test_missing_cells_leave_gaps_not_shifts():
    r = synthetic_result()
    cells = tuple(c for c in r.cells if not (c.layer == "dw" and c.w_bits == 3))
    html = render_report(type(r)(**{**r.__dict__, "cells": cells}))
    data, layout = plots(html)["plot-profile"]
    bar3 = data[0]
    assert bar3["x"] == ["outl", "wide", "fine"] and bar3["y"] == pytest.approx([18.0, 4.5, 0.0])
    assert layout["xaxis"]["categoryarray"] == ["outl", "dw", "wide", "fine"]
    assert plots(html)["plot-heatmap"][0][0]["z"][1][0] is None


def test_results_without_statistics_still_render():
    r = synthetic_result()
    layers = tuple(type(l)(**{**l.__dict__, "weight": None, "input_range": None, "output_range": None}) for l in r.layers)
    html = render_report(type(r)(**{**r.__dict__, "layers": layers, "config": {}}))
    assert "No weight statistics in these results." in html and "plot-weights" not in plots(html)
    assert {"plot-profile", "plot-heatmap", "plot-activations", "plot-noise"} <= set(plots(html))


def test_followups_when_nothing_helps_and_additivity_fails():
    from quantlens.experiments.additivity import AdditivityPoint, AdditivityResult
    from quantlens.experiments.fixloop import FixResult, FixRow, LocalTrial
    from quantlens.core.layer_config import QuantConfig
    from quantlens.report.extras import Extras
    from quantlens.report.fmt import Units
    from quantlens.report.followup import followups

    nan = float("nan")
    rows = (FixRow("float", 0.9, 0.0, 0.0, math.inf), FixRow("naive", 0.8, 0.1, 1.0, nan), FixRow("local", 0.8, 0.1, 1.0, nan))
    fix = FixResult("top1", True, 8, 8, ("outl",), (LocalTrial("outl", "sawb", 0.12, nan, 0.1, False),), rows, QuantConfig())
    # predicted (0, 1, 2)/100 against measured (0, 2, 1)/100: r = 1 / sqrt(2 * 2) = 0.5
    pts = tuple(AdditivityPoint([n], p, m) for n, p, m in [("a", 0.0, 0.0), ("b", 0.01, 0.02), ("c", 0.02, 0.01)])
    add = AdditivityResult("top1", 0.9, 4, 8, 8, 0, pts)
    texts = [i.text for i in followups(Extras(additivity=add, fix=fix), Units.for_metric("top1"), "top1")]
    assert texts[0] == ("Measured with the whole network quantized at 8 bits (fix.json): naive costs 10.00%; "
                        "no fix lowered a culprit layer's own degradation, so none was kept.")
    assert "do not add up well here" in texts[1] and "Pearson r = 0.500" in texts[1]
    # a fix.json measured with another metric than the sweep's is not quoted
    assert len(followups(Extras(fix=fix), Units.for_metric("kl"), "kl")) == 0


def test_fix_table_marks_improvement_for_lower_is_better_metrics():
    from quantlens.experiments.fixloop import FixResult
    from quantlens.report.extras_html import fix_html

    t = FixResult.from_dict({"schema": "quantlens/fix-v1", "metric": "kl", "higher_is_better": False, "rows": [
        {"method": "naive", "metric": 0.5}, {"method": "local", "metric": 0.1, "fixes": {"a": ["sawb"]}}]})
    html = fix_html(t)
    local = html[html.index("local</td>"):]
    assert 'class="good"' in local[: local.index("</tr>")] and "+0.4" in local[: local.index("</tr>")]


def _cells(html: str, table_id: str, first: str) -> list[str]:
    """The text of each cell of the row of ``table_id`` whose first cell is ``first``."""
    t = html[html.index(f'id="{table_id}"'):]
    t = t[: t.index("</table>")]
    for row in re.findall(r"<tr>(.*?)</tr>", t):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in {table_id}")


def test_fix_and_plan_tables_show_intervals_and_significance(tmp_path):
    """fix.json and plan.json as their owners write them: each row's 95% interval, whether a measured
    degradation is distinguishable from float, whether a kept local fix and the plan's change from
    uniform are significant."""
    from quantlens.experiments.fixloop import FixResult, FixRow, LocalTrial
    from quantlens.experiments.plan import LayerPlan, PlanResult
    from quantlens.core.layer_config import QuantConfig

    r = synthetic_result()
    write_run(r, tmp_path)
    rows = (FixRow("float", 0.9, 0.0, 0.0, float("inf")),
            FixRow("naive", 0.8, 0.10, 1.0, 12.0, ci_low=0.07, ci_high=0.13),
            FixRow("global:sawb", 0.79, 0.11, 1.1, 11.0, {"*": ["sawb"]}, ci_low=0.08, ci_high=0.14),
            FixRow("local", 0.88, 0.02, 0.4, 15.0, {"outl": ["sawb"], "dw": ["mse"]}, ci_low=-0.004, ci_high=0.044))
    trials = (LocalTrial("outl", "sawb", 0.01, 0.1, 0.06, True, 0.002, 0.018, True),
              LocalTrial("dw", "mse", 0.015, 0.2, 0.02, True, -0.005, 0.035, False),
              LocalTrial("dw", "sawb", 0.03, 0.3, 0.02, False, 0.01, 0.05, False))
    FixResult("top1", True, 4, 8, ("outl", "dw"), trials, rows, QuantConfig.uniform(["outl", "dw"], 4),
              num_samples=450).to_json(tmp_path / "fix.json")
    layers = (LayerPlan("outl", 1000, 8, 0.001, 0.1), LayerPlan("dw", 1000, 4, 0.01, 0.2))
    plan = PlanResult("top1", 0.9, 6.0, 12000, 8, layers, 0.012, 0.888, 6, 0.02, 0.02, 0.88,
                      measured_ci=(0.004, 0.020), uniform_ci=(0.011, 0.029), num_samples=450)
    vs = plan.vs_uniform()
    assert vs is not None and not vs["significant"] and vs["samples_to_resolve"] > 450  # the owner's verdict
    plan.to_json(tmp_path / "plan.json")
    html = write_report(tmp_path).read_text()

    assert _cells(html, "fix-table", "naive")[3:5] == ["[+7.00%, +13.00%]", "worse than float"]
    assert _cells(html, "fix-table", "float")[3:5] == ["-", "-"]
    local = _cells(html, "fix-table", "local")
    assert local[3:6] == ["[-0.40%, +4.40%]", "~ 0 (noise)", "+8.00% (significant)"]
    assert _cells(html, "fix-table", "global:sawb")[5] == "-1.00% (not significant)"
    assert "95% paired intervals on 450 samples" in html
    assert _cells(html, "fix-trials", "outl")[4:] == ["[+0.20%, +1.80%]", "kept (significant)"]
    trials_html = html[html.index('id="fix-trials"'):]
    assert "<td data-v=\"1\">kept (not significant)</td>" in trials_html
    assert "Kept, but the gain over the naive cell is within the noise on 450 samples: dw (mse)." in html

    p = _cells(html, "plan-table", "plan")
    assert p[4:] == ["[+0.40%, +2.00%]", "worse than float", "+0.80% (not significant)"]
    assert _cells(html, "plan-table", "uniform")[4:] == ["[+1.10%, +2.90%]", "worse than float", "-"]
    assert (f"Plan vs uniform (uniform minus plan degradation): +0.80% is not significant on 450 samples; "
            f"about {vs['samples_to_resolve']:,} would resolve it.") in html


def test_fix_and_plan_tables_without_intervals_keep_their_columns(tmp_path):
    """Older files (no ci, no significant) render as before: no interval columns, no verdicts."""
    from quantlens.experiments.fixloop import FixResult
    from quantlens.experiments.plan import PlanResult
    from quantlens.report.extras_html import fix_html, plan_html

    f = FixResult.from_dict({"metric": "top1", "rows": [{"method": "naive", "metric": 0.8}, {"method": "local", "metric": 0.85}],
                            "trials": [{"layer": "a", "fix": "sawb", "degradation": 0.01, "naive_degradation": 0.05, "kept": True}]})
    html = fix_html(f)
    assert "95% interval" not in html and "significant" not in html and ">kept<" in html
    p = PlanResult.from_dict({"w_bits": {"a": 4}, "predicted": 0.01, "measured": 0.02, "measured_ci": [None, None],
                        "uniform": {"w_bits": 4, "measured": 0.03, "ci": [None, None]}, "vs_uniform": None})
    html = plan_html(p, Units.for_metric("top1"))
    assert "95% interval" not in html and "vs uniform" not in html and "significant" not in html
