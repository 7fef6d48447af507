"""An estimate in its metric's units (:mod:`quantlens.sweep.predicted`), against the metrics' definitions."""

from __future__ import annotations

import math

import pytest

from quantlens.sweep.predicted import in_metric_units, predicted_degradation


@pytest.mark.parametrize("nll, delta", [(2.9, 0.229), (3.5, -0.01), (0.5, 1e-6), (4.0, 2.0)])
def test_perplexity_is_exp_of_the_mean_nll_so_its_change_is_exact(nll, delta):
    ppl = math.exp(nll)
    assert predicted_degradation("perplexity", ppl, delta) == pytest.approx(math.exp(nll + delta) - math.exp(nll), rel=1e-12)


def test_nll_and_token_kl_are_the_estimates_own_units():
    assert predicted_degradation("nll", 3.0, 0.25) == 0.25
    assert predicted_degradation("token_kl", 0.0, 0.01) == 0.01


@pytest.mark.parametrize("metric", ["top1", "agreement", "cosine", "mse"])
def test_a_metric_the_kl_does_not_convert_to_gives_none(metric):
    assert not in_metric_units(metric)
    assert predicted_degradation(metric, 0.99, 0.1) is None


def test_a_missing_estimate_gives_none():
    assert predicted_degradation("perplexity", 18.0, float("nan")) is None
    assert predicted_degradation("perplexity", 18.0, None) is None  # type: ignore[arg-type]
