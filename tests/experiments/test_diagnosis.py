"""Why a culprit broke (:mod:`quantlens.experiments.diagnosis`), against weights and inputs built to
have each symptom by construction: the numbers are computed here from the definitions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.experiments.diagnosis import LayerDiagnosis, diagnose
from quantlens.network.measure import capture_traceable
from quantlens.quant.spec import QuantSpec


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 32, bias=False), nn.Linear(32, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _setup():
    torch.manual_seed(0)
    m = Two().eval()
    with torch.no_grad():
        m.a.weight.normal_(0, 1)
        m.a.weight[3, 5] = 40.0  # a weight outlier
        m.a.weight[7, 16:32] = 1e-8  # one block of 16 that underflows NVFP4 (scale below E4M3's smallest step)
        m.a.weight[9, 0:16] = 1e-8
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(2):
        x = torch.randn(8, 64, generator=g)
        x[:, 11] *= 100.0  # an outlier input channel
        data.append((x, None))
    return m, capture_traceable(m, data), data


def test_numbers_from_their_definitions():
    m, graph, data = _setup()
    cfg = QuantConfig((("a", LayerQuant(weight=QuantSpec(bits=4, format="nvfp4"))),))
    d = diagnose(graph, ["a", "b"], cfg, data)["a"]
    w = m.a.weight.detach()
    assert d.weight_peak == pytest.approx(float(w.abs().max() / w.pow(2).mean().sqrt()), rel=1e-6)
    x = torch.cat([b for b, _ in data])
    amax = x.abs().amax(0)
    assert d.act_peak == pytest.approx(float(amax.max() / amax.median()), rel=1e-6)
    assert d.dead_blocks == 2 / (32 * 64 / 16)  # exactly the two planted blocks
    assert d.zeroed >= 32 / (32 * 64) and d.causes == ("weight outliers", "activation outliers", "underflow")
    b = diagnose(graph, ["b"], cfg, data)["b"]  # not in the config: no quantizer, no underflow figures
    assert math.isnan(b.zeroed) and math.isnan(b.dead_blocks) and "underflow" not in b.causes
    assert LayerDiagnosis.from_dict(d.to_dict()) == d and "sigma" in d.sentence()


def test_an_integer_row_grid_has_no_dead_rows_and_no_calib_means_no_act_peak():
    _, graph, _ = _setup()
    cfg = QuantConfig.uniform(["a"], w_bits=8)
    d = diagnose(graph, ["a"], cfg)["a"]
    assert math.isnan(d.act_peak) and d.dead_blocks == 0.0 and "activation outliers" not in d.causes
