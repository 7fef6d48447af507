"""The summary's sentences on an ``--estimate`` result: sums, shares and "from X up" claims use the
estimate where a cell was not measured (marked), and claim nothing for cells nobody measured."""

import dataclasses
import math

import pytest

from quantlens.report.insights import estimated_view, insights
from quantlens.sweep.predicted import predicted_degradation
from support.report_helpers import llm_estimate_result

CHECKED = ("model.layers.3.mlp.down_proj", "model.layers.7.self_attn.v_proj", "lm_head")


def _texts(r, bits):
    return [i.text for i in insights(r, bits)]


def _with_intervals(r):
    cells = [dataclasses.replace(c, ci_low=c.degradation / 2, ci_high=c.degradation * 1.5) if math.isfinite(c.degradation) else c
             for c in r.cells]
    return dataclasses.replace(r, cells=tuple(cells))


def test_view_fills_unmeasured_cells_with_the_estimate_in_metric_units() -> None:
    r = llm_estimate_result(4, checked=("model.layers.3.mlp.down_proj", "lm_head"))
    view, est = estimated_view(r, r.at("nvfp4"))
    assert est == {c.layer for c in r.at("nvfp4")} - {"model.layers.3.mlp.down_proj", "lm_head"}
    for c, v in zip(r.at("nvfp4"), view):
        assert v.degradation == (c.degradation if c.layer not in est else predicted_degradation("nll", r.baseline, c.estimate))


def test_sums_and_shares_count_every_layer() -> None:
    r = llm_estimate_result(4, checked=("model.layers.3.mlp.down_proj", "lm_head"))
    cells = r.at("nvfp4")
    total = sum(c.degradation if math.isfinite(c.degradation) else c.estimate for c in cells)  # nll: the estimate is the metric's units
    lead = max(cells, key=lambda c: c.degradation if math.isfinite(c.degradation) else c.estimate)
    texts = _texts(r, "nvfp4")
    additivity = next(t for t in texts if "additivity" in t)
    assert f"about {total:.4g}" in additivity and f"{len(cells) - 2} of {len(cells)} cells estimated" in additivity
    share = next(t for t in texts if "accounts for" in t)
    assert share.startswith(f"{lead.layer} accounts for about {lead.degradation / total:.0%}")
    assert "only the measured cells" not in " ".join(texts)


def test_estimated_cells_are_marked() -> None:
    r = llm_estimate_result(4, checked=("lm_head",))
    causes = [i.text for i in insights(r, "nvfp4") if i.kind == "cause"]
    assert causes and all(" est. at " in t for t in causes if not t.startswith("lm_head "))
    assert all("mean shift nan" not in t for t in causes)


def test_no_clean_claim_for_unmeasured_cells() -> None:
    """The check measured nvfp4 only: nothing may say fp8 is clean 'on N samples' from intervals it does not have."""
    texts = _texts(_with_intervals(llm_estimate_result(4)), "nvfp4")
    assert not any("no layer is significantly worse" in t for t in texts)
    worse = next(t for t in texts if "significantly worse than float" in t)
    assert "of the 2 measured layers (of 29)" in worse
    assert not any(t.startswith("From ") for t in texts)


def test_a_metric_the_estimate_does_not_convert_to_gets_no_sums() -> None:
    r = dataclasses.replace(llm_estimate_result(4), metric_name="token_agreement", higher_is_better=True)
    texts = _texts(r, "nvfp4")
    assert not any("additivity" in t or "stays within" in t or "No swept" in t for t in texts)
    share = next(t for t in texts if "accounts for" in t)
    assert "a first-order score that ranks layers, not a token_agreement figure" in share


@pytest.mark.parametrize("bits", [4, 8])
def test_exact_sweep_sentences_unchanged(bits: int) -> None:
    from support.report_helpers import synthetic_result

    texts = _texts(synthetic_result(), bits)
    assert not any("est." in t or "by the estimate" in t for t in texts)


def test_worst_table_sums_the_estimate_in_perplexity_units() -> None:
    """The report's per-format table sums what the summary sums: each cell's estimate converted to
    perplexity (``ppl * (exp(delta) - 1)``), not the raw nll deltas."""
    from quantlens.report.fmt import Units
    from quantlens.report.sections import worst_table

    r = dataclasses.replace(llm_estimate_result(4), metric_name="perplexity", baseline=12.0)
    u = Units.for_metric("perplexity")
    total = sum(12.0 * math.expm1(c.estimate) for c in r.at("nvfp4"))
    lead = max(r.at("nvfp4"), key=lambda c: c.estimate)
    html = worst_table(r, u, 3)
    assert f"est {u.deg(total)}<" in html
    assert f"(est {u.deg(12.0 * math.expm1(lead.estimate), signed=True)}" in html
