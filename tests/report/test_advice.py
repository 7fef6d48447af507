"""Advice that knows its noise: significant / indistinguishable from zero / unresolved rankings,
in the summary, the CLI table, the heatmap, fix and plan."""

from __future__ import annotations

import math

from support.report_helpers import plots, synthetic_result, with_intervals, write_run

from quantlens.experiments.fixloop import FixResult, FixRow, LocalTrial
from quantlens.cli import main
from quantlens.experiments.plan import LayerPlan, PlanResult
from quantlens.core.layer_config import QuantConfig
from quantlens.report.insights import insights
from quantlens.report.noise import noise_sentences, top_tier, verdict


def test_verdicts_and_unresolved_ranking():
    r = with_intervals(n=200)  # at 4 bits: outl 12/200, dw 4/200, wide 3/200, fine 0
    cells = {c.layer: c for c in r.at(4)}
    assert [verdict(cells[n]) for n in ("outl", "dw", "wide", "fine")] == ["worse", "worse", "zero", "zero"]
    worse = [c for c in r.worst(4, 4) if verdict(c) == "worse"]
    assert [c.layer for c in top_tier(worse)] == ["outl", "dw"]  # 12 vs 4 of 200: not separated
    text = " ".join(noise_sentences(r, 4))
    assert "outl and dw cannot be told apart on 200 samples; about " in text and "would resolve +4.00%" in text
    assert "wide and fine cannot be told from zero on 200 samples" in text
    summary = " ".join(i.text for i in insights(r, 4))
    assert "accounts for" not in summary.replace("together account for", "")
    assert "the data cannot rank them" in summary


def test_more_samples_resolve_the_ranking():
    r = with_intervals(n=5000)
    assert [c.layer for c in top_tier([c for c in r.worst(4, 4) if verdict(c) == "worse"])] == ["outl"]
    summary = " ".join(i.text for i in insights(r, 4))
    assert "outl accounts for 63% of the summed 4-bit degradation" in summary
    assert "significantly more than any other layer" in summary
    assert "fine cannot be told from zero on 5,000 samples" in summary


def test_no_interval_keeps_the_point_ranking():
    r = synthetic_result()  # a custom metric: no intervals, old behaviour
    assert noise_sentences(r, 4) == []
    assert "outl accounts for 63% of the summed 4-bit degradation" in " ".join(i.text for i in insights(r, 4))


def test_heatmap_marks_cells_containing_zero_and_hover_shows_interval(tmp_path):
    r = with_intervals(n=100)
    write_run(r, tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    data, _ = plots((tmp_path / "report.html").read_text())["plot-heatmap"]
    base, veil = data[0], data[1]
    names = base["y"]
    bits = base["x"]
    for i, n in enumerate(names):
        for j, b in enumerate(bits):
            c = r.cell(n, int(b.split()[0]))
            contains0 = c.ci_low <= 0 <= c.ci_high
            assert (veil["z"][i][j] is not None) == contains0
            assert "95% interval [" in base["customdata"][i][j][2]
    assert "%{customdata[2]}" in base["hovertemplate"]


def test_cli_table_prints_intervals(tmp_path):
    import io

    from rich.console import Console

    from quantlens.cli.common import print_summary

    con = Console(width=140, record=True, file=io.StringIO())  # wide enough for every column, whatever $COLUMNS says
    print_summary(with_intervals(n=200), k=4, out=con)
    out = con.export_text()
    assert "95% CI@4b" in out and "~ 0 (noise)" in out and "worse" in out
    assert "cannot be told apart on 200 samples" in out


def _fix_result(naive_ci, local_ci, trial_sig):
    rows = (FixRow("float", 0.9, 0.0, 0.0, math.inf), FixRow("naive", 0.85, 0.05, 1.0, 10.0, {}, *naive_ci),
            FixRow("local", 0.88, 0.02, 0.5, 12.0, {"a": ["sawb"]}, *local_ci))
    trials = (LocalTrial("a", "sawb", 0.01, 0.1, 0.03, True, 0.0, 0.02, trial_sig),)
    return FixResult("top1", True, 4, 8, ("a",), trials, rows, QuantConfig(), 400)


def test_fix_says_whether_its_gain_is_significant():
    from quantlens.cli.fix import significance_lines

    weak = " ".join(significance_lines(_fix_result((0.02, 0.08), (0.0, 0.05), False)))
    assert "the gain is not significant on 400 samples" in weak and "is not significant on 400 samples; about" in weak
    strong = " ".join(significance_lines(_fix_result((0.045, 0.055), (0.015, 0.025), True)))
    assert "a significant gain" in strong and "significant on 400 samples" in strong
    back = FixResult.from_json(_fix_result((0.02, 0.08), (0.0, 0.05), False).to_json())
    assert back.trials[0].significant is False and back.row("naive").ci_high == 0.08


def test_plan_vs_uniform_significance():
    layers = (LayerPlan("a", 10, 4, 0.01, 0.1),)
    common = dict(metric_name="top1", baseline=0.9, budget_bits=4.0, capacity_bits=40, a_bits=8, layers=layers,
                  measured=0.01, measured_metric=0.89, uniform_bits=4, uniform_predicted=0.03, uniform_measured=0.03,
                  uniform_metric=0.87, num_samples=400)
    weak = PlanResult(**common, measured_ci=(-0.01, 0.03), uniform_ci=(0.01, 0.05))
    v = weak.vs_uniform()
    assert v is not None and not v["significant"] and v["samples_to_resolve"] > 400
    strong = PlanResult(**common, measured_ci=(0.008, 0.012), uniform_ci=(0.028, 0.032))
    assert strong.vs_uniform()["significant"]
    back = PlanResult.from_json(weak.to_json())
    assert back.measured_ci == weak.measured_ci and back.vs_uniform() == v


def test_fix_says_whether_local_beats_the_best_global_fix():
    """The paper's claim (a fix on the culprits alone beats it everywhere) is tested, not assumed."""
    from quantlens.cli.fix import significance_lines

    def result(global_deg, global_ci):
        rows = (FixRow("float", 0.9, 0.0, 0.0, math.inf), FixRow("naive", 0.85, 0.05, 1.0, 10.0, {}, 0.045, 0.055),
                FixRow("global:gptq", 0.9 - global_deg, global_deg, 0.4, 13.0, {"*": ["gptq"]}, *global_ci),
                FixRow("global:mse", 0.86, 0.04, 0.8, 11.0, {"*": ["mse"]}, 0.035, 0.045),
                FixRow("local", 0.88, 0.02, 0.5, 12.0, {"a": ["gptq"]}, 0.015, 0.025))
        return FixResult("top1", True, "nvfp4", None, ("a",), (), rows, QuantConfig(), 400)

    lost = " ".join(significance_lines(result(0.005, (0.001, 0.009))))
    assert "the best global fix (global:gptq) beats local: 0.50% vs 2.00%, significant; the paper's claim does not hold here" in lost
    won = " ".join(significance_lines(result(0.03, (0.01, 0.05))))
    assert "local beats the best global fix (global:gptq): 2.00% vs 3.00%, not significant on 400 samples" in won
    assert result(0.005, (0.001, 0.009)).best_global().method == "global:gptq"
