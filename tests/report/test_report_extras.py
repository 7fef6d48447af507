"""The report reads fix.json, plan.json and additivity.json with their owners' ``from_dict``: what
the owners write reads back equal, older hand-written shapes still render, and one bad file costs
only its own section."""

from __future__ import annotations

import json
import math

import pytest
from support.report_helpers import plots, synthetic_result, write_run

from quantlens.experiments.additivity import AdditivityPoint, AdditivityResult, LayerShift
from quantlens.experiments.fixloop import FixResult, FixRow, LocalTrial
from quantlens.experiments.plan import LayerPlan, PlanResult
from quantlens.core.jsonio import NAN
from quantlens.core.layer_config import QuantConfig
from quantlens.report import load_extras, write_report


def _fix() -> FixResult:
    rows = (FixRow("float", 0.9, 0.0, 0.0, math.inf),
            FixRow("naive", 0.8, 0.10, 1.0, 12.0, {}, 0.07, 0.13),
            FixRow("global:sawb", 0.79, 0.11, 1.1, 11.0, {"*": ["sawb"]}, 0.08, 0.14),
            FixRow("local", 0.88, 0.02, 0.4, 15.0, {"outl": ["sawb"], "dw": ["mse", "bias_correction"]}, -0.004, 0.044))
    trials = (LocalTrial("outl", "sawb", 0.01, 0.1, 0.06, True, 0.002, 0.018, True),
              LocalTrial("dw", "mse", 0.015, 0.2, 0.02, True, -0.005, 0.035, False),
              LocalTrial("dw", "sawb", 0.03, 0.3, 0.02, False))  # no interval, significant None
    config = QuantConfig.uniform(["outl", "dw"], 4).with_fix("sawb", ["outl"])
    return FixResult("top1", True, 4, 8, ("outl", "dw"), trials, rows, config, num_samples=450, model="m")


def _plan(extra: dict) -> PlanResult:
    layers = (LayerPlan("outl", 1000, 8, 0.001, 0.1), LayerPlan("dw", 300, 4, 0.01, NAN))
    return PlanResult("kl", 0.0, 6.0, 7800, 8, layers, 0.012, 0.012, 6, 0.02, 0.02, 0.02, extra,
                      measured_ci=(0.004, 0.020), uniform_ci=(0.011, 0.029), num_samples=450)


def _additivity() -> AdditivityResult:
    pts = (AdditivityPoint(["a"], 0.01, 0.012, 0.5, 0.6, 0.01, 0.014), AdditivityPoint(["a", "b"], 0.03, 0.05, 1.0, NAN),
           AdditivityPoint(["b"], 0.02, 0.03, NAN, NAN))  # the noise defaults are a NaN of their own: not equal after a trip
    lays = (LayerShift("a", "conv", 0.01, 0.02, False), LayerShift("b", "depthwise", 0.3, NAN, True))
    return AdditivityResult("top1", 0.9, 4, 8, None, 3, pts, lays, 0.1, 450, "m")


@pytest.mark.parametrize("obj", [_fix(), _plan({}), _plan({"group_by": "role", "layer_bits": {"l.0": 8, "l.1": 4}}), _additivity()],
                         ids=["fix", "plan", "role-plan", "additivity"])
def test_owner_files_round_trip_through_from_dict(obj):
    d = json.loads(obj.to_json())
    back = type(obj).from_dict(d)
    assert back == obj
    assert back.to_dict() == d  # nothing lost, nothing added
    assert type(obj).from_json(obj.to_json()) == obj


def test_load_extras_returns_the_owners_objects(tmp_path):
    fix, plan, add = _fix(), _plan({}), _additivity()
    fix.to_json(tmp_path / "fix.json")
    plan.to_json(tmp_path / "plan.json")
    add.to_json(tmp_path / "additivity.json")
    ex = load_extras(tmp_path)
    assert (ex.fix, ex.plan, ex.additivity, ex.notes) == (fix, plan, add, ())
    assert ex.additivity.flagged == ["b"] and ex.plan.vs_uniform() == plan.vs_uniform()


def test_files_of_an_older_version_read_with_defaults():
    """fix.json and plan.json as written before intervals: no ci, significant, num_samples, vs_uniform."""
    d = _fix().to_dict()
    del d["num_samples"]
    for r in d["rows"] + d["trials"]:
        r.pop("ci_low"), r.pop("ci_high"), r.pop("significant", None)
    f = FixResult.from_dict(d)
    assert f.num_samples == 0 and all(math.isnan(r.ci_low) and math.isnan(r.ci_high) for r in f.rows)
    assert [t.significant for t in f.trials] == [None, None, None]
    assert [(r.method, r.degradation, r.sqnr_db) for r in f.rows] == [(r.method, r.degradation, r.sqnr_db) for r in _fix().rows]
    p = _plan({}).to_dict()
    for k in ("measured_ci", "num_samples", "vs_uniform"):
        del p[k]
    del p["uniform"]["ci"]
    back = PlanResult.from_dict(p)
    assert back.vs_uniform() is None and back.layers == _plan({}).layers and back.extra == {}


def test_older_hand_written_shapes_still_render(tmp_path):
    """Shapes the report has always read: no schema, rows without degradation, a fix given as one
    name, bits as a ``{layer: b}`` dict, budget as a number, additivity with points only."""
    write_run(synthetic_result(), tmp_path)
    (tmp_path / "fix.json").write_text(json.dumps({
        "metric": "top1", "w_bits": 4, "rows": [{"method": "float", "metric": 0.9}, {"method": "naive", "metric": 0.8},
                                                {"method": "local", "metric": 0.85, "fixes": {"outl": "sawb"}}],
        "trials": [{"layer": "outl", "fix": "sawb", "degradation": 0.01, "naive_degradation": 0.05, "kept": True}]}))
    (tmp_path / "plan.json").write_text(json.dumps({
        "schema": "quantlens/plan-v1", "bits": {"outl": 4, "dw": 8}, "measured": 0.02, "budget": 6,
        "uniform": {"bits": 6, "measured": 0.03}}))
    (tmp_path / "additivity.json").write_text(json.dumps({
        "points": [{"low_bit_layers": ["outl"], "predicted": 0.01, "measured": 0.012},
                   {"low_bit_layers": ["dw"], "predicted": 0.02, "measured": None}]}))
    ex = load_extras(tmp_path)
    assert ex.notes == ()
    # the owner derives a missing degradation from the float row with the one sign rule
    assert [r.degradation for r in ex.fix.rows] == [0.0, 0.9 - 0.8, 0.9 - 0.85]
    assert ex.fix.rows[-1].fixes == {"outl": ["sawb"]}
    html = write_report(tmp_path).read_text()
    fix = html[html.index('id="fix-table"'):]
    fix = fix[: fix.index("</table>")]
    assert "95% interval" not in fix and "10.00%" in fix and "+5.00%" in fix and "outl: sawb" in fix
    assert "naive costs 10.00%; the local fixes (outl: sawb) leave 5.00%, recovering 50% of it" in html
    plan_plot = plots(html)["plot-plan"]
    assert plan_plot[0][0]["y"] == [4, 8] and "(budget 6)" in plan_plot[1]["title"]["text"]
    plan = html[html.index('id="plan-table"'):]
    plan = plan[: plan.index("</table>")]
    assert plan.count("<tr>") == 3 and "2.00%" in plan and "3.00%" in plan and ">6</td>" in plan
    assert "Mixed-precision plan (plan.json): the plan, predicted -, measured 2.00%; uniform 6 bits measured 3.00%." in html
    data, layout = plots(html)["plot-additivity"]
    assert data[1]["x"] == pytest.approx([1.0]) and "Pearson r = -" in layout["title"]["text"]  # a point without a measurement
    assert '<section id="additivity">' in html and "Additivity over" not in html


def test_a_damaged_file_costs_only_its_section(tmp_path):
    write_run(synthetic_result(), tmp_path)
    d = _fix().to_dict()
    d["config"]["layers"]["outl"] = "not a layer entry"
    (tmp_path / "fix.json").write_text(json.dumps(d))
    _plan({}).to_json(tmp_path / "plan.json")
    ex = load_extras(tmp_path)
    assert ex.fix is None and ex.plan == _plan({})
    assert len(ex.notes) == 1 and ex.notes[0].startswith("fix.json could not be read (")
    html = write_report(tmp_path).read_text()
    assert '<section id="fixes">' not in html and '<section id="plan">' in html and "fix.json could not be read" in html
