"""Half-precision models are analysed in their own dtype; ranges match a float32 copy's."""

from __future__ import annotations

import pytest
import torch

from support.lm_models import tiny_lm, token_data
from quantlens.sweep.api import analyze
from quantlens.errors import QuantlensError


def _state(m):
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_model_calibration_ranges_match_a_float32_copy_within_rounding(dtype):
    r32 = analyze(tiny_lm(), token_data(), w_bits=[4, 8], metric="token_kl", granularity="per-group-8")
    model = tiny_lm().to(dtype)
    before = _state(model)
    r = analyze(model, token_data(), w_bits=[4, 8], metric="token_kl", granularity="per-group-8")
    eps = torch.finfo(dtype).eps
    for a, b in zip(r32.layers, r.layers):
        assert a.name == b.name
        for ra, rb in ((a.input_range, b.input_range), (a.output_range, b.output_range)):
            scale = max(abs(ra[0]), abs(ra[1]))
            assert abs(ra[0] - rb[0]) <= 4 * eps * scale and abs(ra[1] - rb[1]) <= 4 * eps * scale, (a.name, ra, rb)
        # weights are quantized in float32 from the half weights: the clip is the half weight's max
        assert b.weight is not None and a.weight is not None
        assert abs(a.weight.absmax - b.weight.absmax) <= eps * a.weight.absmax
    for c32, c in zip(r32.cells, r.cells):
        assert c.degradation == pytest.approx(c32.degradation, rel=0.5, abs=1e-3)
    assert all(torch.equal(before[k], v) and v.dtype == dtype for k, v in model.state_dict().items())


def test_half_model_on_a_device_without_half_matmul_is_one_line(monkeypatch):
    import quantlens.core.precision as precision

    def no_bf16(dtype, device):
        raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'BFloat16'")

    monkeypatch.setattr(precision, "_probe", no_bf16)
    with pytest.raises(QuantlensError, match=r"bfloat16 .*cannot multiply bfloat16 matrices on cpu.*model.float\(\)") as e:
        analyze(tiny_lm().to(torch.bfloat16), token_data(), w_bits=[4], metric="token_kl", device="cpu")
    assert "\n" not in str(e.value)
    analyze(tiny_lm(), token_data(1), w_bits=[4], metric="token_kl", device="cpu")  # float32 is not probed
