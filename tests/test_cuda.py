"""``device="cuda"``: the cone engine equals the naive loop on the GPU and is close to the CPU
(skipped without a GPU; ``benchmarks/gpu_check.py`` is the full-size check)."""

from __future__ import annotations

import pytest
import torch
from support.models import tiny_data, tiny_net

import quantlens as ql
from support.helpers import close

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _rel(a: float, b: float) -> float:  # for the bounds below, which differ per quantity
    return 0.0 if close(a, b, rel=0.0) else abs(a - b) / max(abs(a), abs(b), 1e-12)


def test_cuda_cone_equals_naive_and_is_close_to_cpu():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    data = tiny_data(n_batches=2)
    gpu = ql.analyze(tiny_net(), data, w_bits=(3, 8), metric="kl", device="cuda")
    naive = ql.analyze(tiny_net(), data, w_bits=(3, 8), metric="kl", device="cuda", engine="naive")
    cpu = ql.analyze(tiny_net(), data, w_bits=(3, 8), metric="kl")
    for g, n, c in zip(gpu.cells, naive.cells, cpu.cells):
        assert _rel(g.noise, n.noise) <= 1e-5 and _rel(g.sqnr_db, n.sqnr_db) <= 1e-5
        assert _rel(g.sqnr_db, c.sqnr_db) <= 2e-2, (g.layer, g.w_bits, g.sqnr_db, c.sqnr_db)
    assert gpu.num_samples == cpu.num_samples and gpu.baseline == pytest.approx(0.0, abs=1e-9)


def test_cuda_resume_cache(tmp_path):
    data = tiny_data(n_batches=2)
    r = ql.analyze(tiny_net(), data, w_bits=(4,), metric="kl", device="cuda", cache=tmp_path / "c")
    assert r.num_samples == 16 and not (tmp_path / "c").exists()
