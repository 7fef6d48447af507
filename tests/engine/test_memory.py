"""Memory at scale: the cache keeps only the selected layers' values, cones share the float
weights, and a run that cannot fit is refused with one line before it starts."""

from __future__ import annotations

import pytest
import torch
from support.lm_models import tiny_lm, token_data
from torch import nn

import quantlens as ql
from quantlens.core.inputs import Inputs
from quantlens.data.batches import iterate
from quantlens.engine import memory
from quantlens.engine.runner import ConeRunner
from quantlens.errors import QuantlensError
from quantlens.graph.capture import capture


def _cache_bytes(runner, batch):
    _, cache = runner.float_pass(batch)
    return sum(v.numel() * v.element_size() for v in cache.values() if isinstance(v, torch.Tensor))


def test_check_fits_counts_the_largest_batch_that_fits(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: 10 * 2**30)
    memory.check_fits(2**30, 2**30, 9)  # 1 + 9 GB = 10 GB: fits
    with pytest.raises(QuantlensError) as e:
        memory.check_fits(2 * 2**30, 3 * 2**30, 4, "the sweep", tokens=256)
    msg = str(e.value)
    assert "\n" not in msg
    # need 2 + 4 x 3 = 14 GB; (10 - 2) // 3 = 2 samples fit, 2 x 256 tokens
    assert "about 14.0 GB" in msg and "at 4 sample(s) per batch (1024 tokens)" in msg
    assert "at most 2 sample(s) per batch (512 tokens) fit" in msg and "10.0 GB is available" in msg
    with pytest.raises(QuantlensError, match="not even one sample per batch fits"):
        memory.check_fits(11 * 2**30, 1, 1)


def test_check_fits_without_a_known_limit_does_nothing(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda: None)
    memory.check_fits(2**60, 2**60, 8)


def test_available_bytes_reads_meminfo():
    avail = memory.available_bytes()
    assert avail is None or avail > 0


def test_analyze_refuses_a_model_too_large_before_the_run(monkeypatch):
    model, data = tiny_lm(), token_data()
    runs = []
    monkeypatch.setattr(ConeRunner, "evaluations", lambda *a, **k: runs.append(1) or iter(()))
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    with pytest.raises(QuantlensError, match=r"the sweep needs about .* sample\(s\) per batch .*tokens.* is available"):
        ql.analyze(model, data, w_bits=(4,), metric="perplexity", granularity="per-group-8")
    assert runs == []  # refused before any cone ran


def test_per_sample_bytes_is_one_sample_of_the_cache_plus_three_outputs():
    graph = capture(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)))
    runner = ConeRunner(graph)
    x = torch.randn(5, 8)
    # kept: x [1, 8], relu [1, 16], the output [1, 4] (layer 1's output); plus 3 outputs [1, 4]
    assert runner.per_sample_bytes(Inputs((x,))) == 4 * (8 + 16 + 4) + 3 * 4 * 4
    assert _cache_bytes(runner, Inputs((x,))) == 5 * 4 * (8 + 16 + 4)


def test_selected_layers_keep_a_smaller_cache_and_the_same_cells():
    model, data = tiny_lm(), token_data()
    graph = capture(tiny_lm())
    names = [l.name for l in graph.layers]
    pick = [names[0], names[len(names) // 2]]
    batch = next(iter(iterate(data)))[0]
    full, few = ConeRunner(graph), ConeRunner(capture(tiny_lm()))
    few.select([names.index(n) for n in pick])
    assert _cache_bytes(few, batch) < 0.5 * _cache_bytes(full, batch)
    with pytest.raises(QuantlensError, match="not among the layers this runner keeps"):
        few.run(few.float_pass(batch)[1], names.index(names[1]), few.float_weight(names.index(names[1])))
    every = ql.analyze(model, data, w_bits=(3, 6), metric="perplexity", granularity="per-group-8")
    some = ql.analyze(model, data, w_bits=(3, 6), metric="perplexity", granularity="per-group-8", layers=pick)
    for c in some.cells:
        ref = every.cell(c.layer, c.w_bits)
        assert (c.metric, c.noise, c.mean_shift) == (ref.metric, ref.noise, ref.mean_shift)


def test_cones_share_the_float_weights():
    graph = capture(tiny_lm())
    runner = ConeRunner(graph)
    for i, c in enumerate(runner.cones):
        assert c.qlayer.qweight.data_ptr() == runner.float_weight(i).data_ptr()


def test_the_estimate_keeps_only_the_checked_quantized_weights():
    from quantlens.data.batches import iterate as it
    from quantlens.parallel import SweepRecipe
    from quantlens.sweep.api import make_config
    from quantlens.sweep.estimate import estimate_sweep

    model, data = tiny_lm(), token_data()
    sweep = SweepRecipe(model, next(it(data)), make_config([3, 6], a_bits=None, granularity="per-group-8"), "perplexity",
                        "cpu", None, None, "cone", None).build()
    assert len(sweep.qweights) == 2 * len(sweep.layer_ids)  # quantized once when prepared
    kept = {k: v.weight.clone() for k, v in sweep.qweights.items()}
    r = estimate_sweep(sweep, data, k=2)
    checked = {(i, b) for (i, b) in sweep.qweights}
    assert len(checked) == r.extra["estimate"]["checked_cells"] and {b for _, b in checked} == {r.extra["estimate"]["check_bits"]}
    for key, w in kept.items():  # quantized again on demand: the same weights, bit for bit
        assert torch.equal(sweep.quantize(*key).weight, w) and torch.equal(sweep.qweights[key].weight, w)
