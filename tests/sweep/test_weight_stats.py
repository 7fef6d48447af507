"""``weight_stats`` against numpy (float64 over the whole tensor) and against itself in chunks."""

import numpy as np
import pytest
import torch

from quantlens.sweep.collect import weight_stats


def _numpy_oracle(w: torch.Tensor, bins: int) -> dict:
    a = w.detach().double().reshape(-1).numpy()
    mean, std = a.mean(), a.std()  # population std, ddof=0
    counts, edges = np.histogram(a, bins=bins, range=(a.min(), a.max()))  # the top edge in the last bin
    return {"min": a.min(), "max": a.max(), "mean": mean, "std": std, "counts": counts.tolist(), "edges": edges,
            "outliers": int((np.abs(a - mean) > 3 * std).sum())}


@pytest.mark.parametrize("step", [7, 1000, 1 << 20])
def test_weight_stats_match_numpy(step: int) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(96, 40, generator=g) * 0.02
    w[3, 5] = 0.5  # an outlier
    s = weight_stats(w, bins=16, step=step)
    o = _numpy_oracle(w, 16)
    assert s.min == o["min"] and s.max == o["max"]
    assert s.mean == pytest.approx(o["mean"], rel=1e-12, abs=1e-15)
    assert s.std == pytest.approx(o["std"], rel=1e-12)
    assert s.hist_counts == o["counts"]
    assert s.hist_edges == pytest.approx(o["edges"].tolist(), rel=1e-6)
    assert s.outliers_3sigma == o["outliers"] >= 1
    assert sum(s.hist_counts) == w.numel()


def test_weight_stats_chunks_do_not_change_counts() -> None:
    w = torch.randn(300, 11, generator=torch.Generator().manual_seed(1))
    whole, parts = weight_stats(w, step=1 << 20), weight_stats(w, step=64)
    assert parts.hist_counts == whole.hist_counts and parts.outliers_3sigma == whole.outliers_3sigma
    assert parts.mean == pytest.approx(whole.mean, rel=1e-12) and parts.std == pytest.approx(whole.std, rel=1e-12)


def test_weight_stats_constant_weight() -> None:
    s = weight_stats(torch.full((4, 4), 0.25), bins=8)
    assert (s.min, s.max, s.mean, s.std, s.outliers_3sigma) == (0.25, 0.25, 0.25, 0.0, 0)
    assert s.hist_counts == [16] + [0] * 7


def test_weight_stats_bf16_weight() -> None:
    w = torch.randn(64, 32, generator=torch.Generator().manual_seed(2)).bfloat16()
    s, o = weight_stats(w, bins=8, step=100), _numpy_oracle(w.float(), 8)
    assert s.std == pytest.approx(o["std"], rel=1e-12) and s.hist_counts == o["counts"]
