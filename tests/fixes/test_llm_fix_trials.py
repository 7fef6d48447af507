"""The LLM-era fixes in the fix loop: each local trial (TrialRunner's single-layer cell) equals
the whole-network measurement of a config that quantizes that one layer with the fix
(``NetworkMeasurer``: the fix applied by ``apply_fixes``, the network built by
``build_quantized``), so a fix's prequantized weights and online input ops are used the same
way by both engines."""

from __future__ import annotations

import pytest
from support.helpers import assert_close
from support.lm_models import tiny_lm, token_data

import quantlens as ql
from quantlens.core.experiment import ExperimentSpec
from quantlens.core.layer_config import QuantConfig
from quantlens.core.workload import Workload
from quantlens.experiments.fixloop import fix_loop


@pytest.mark.parametrize("fmt,a_format,cands", [("nvfp4", "nvfp4", ("gptq", "hadamard", "four-over-six", "keep-outliers", "awq", "smoothquant")),
                                                ("mxfp4", None, ("gptq", "hadamard-16", "mx-scale", "keep-outliers-1", "awq"))])
def test_llm_fix_trials_equal_single_layer_whole_network_runs(fmt, a_format, cands):
    model, data, calib = tiny_lm(), token_data(3, batch=4), token_data(3, batch=4, seed=1)
    spec = ExperimentSpec(a_bits=None, a_format=a_format)
    sweep = ql.analyze(model, data, config=spec.sweep_config([fmt]), metric="nll", calib=calib)
    result, measurer = fix_loop(Workload(model, data, calib, "nll"), sweep, w_bits=fmt, spec=spec, candidates=cands, top=2,
                                global_rows=[("gptq",)])
    assert {t.fix for t in result.trials} == set(cands) and len(result.culprits) == 2
    for t in result.trials:
        lq = spec.layer(fmt).replace(fixes=(t.fix,))
        want = measurer(QuantConfig(((t.layer, lq),)))
        assert_close(t.degradation, want.degradation, rel=1e-6, abs_=1e-12, what=f"{t.layer}/{t.fix} degradation")
        assert_close(t.noise, want.noise, rel=1e-6, abs_=1e-12, what=f"{t.layer}/{t.fix} noise")
    assert "global:gptq" in [r.method for r in result.rows]

