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


# ---- the kept quantized weights have a byte budget ----------------------------------------
def _cells(r):
    return [(c.layer, c.w_bits, c.metric, c.noise, c.mean_shift, c.sqnr_db, c.w_clip) for c in r.cells]


def test_quantized_weights_keep_the_first_ones_within_the_budget_and_quantize_the_rest_again():
    from quantlens.engine.sweep import QuantizedWeights
    from quantlens.quant.quantizer import quantize_weight
    from quantlens.sweep.api import make_config

    spec = make_config([4], a_bits=None, granularity="per-group-8").weight_spec(4)
    torch.manual_seed(0)
    ws = [torch.randn(16, 32) for _ in range(3)]
    made = []

    def make(i, b):
        made.append(i)
        return quantize_weight(ws[i], spec)

    one = sum(t.numel() * t.element_size() for t in vars(make(0, 4)).values() if isinstance(t, torch.Tensor))
    made.clear()
    q = QuantizedWeights(make, budget=2 * one)  # room for two of the three
    for _ in range(2):  # the sweep's order, twice (two batches)
        got = [q[(i, 4)] for i in range(3)]
    assert list(q) == [(0, 4), (1, 4)] and q.kept_bytes == 2 * one
    assert made == [0, 1, 2, 2]  # the third is quantized again on each use, the first two once
    assert q.remade == 2
    for i, g in enumerate(got):  # quantized again: the kept weights bit for bit
        assert torch.equal(g.weight, quantize_weight(ws[i], spec).weight) and g.clip == quantize_weight(ws[i], spec).clip
    del q[(0, 4)]
    assert q.kept_bytes == one and q.pop((1, 4)) is not None and q.kept_bytes == 0
    q[(2, 4)]
    q.clear()
    assert len(q) == 0 and q.kept_bytes == 0


def test_keep_quantized_budget_from_the_environment(monkeypatch):
    from quantlens.engine.sweep import KEEP_QUANTIZED_BYTES, keep_quantized_bytes

    monkeypatch.delenv("QUANTLENS_KEEP_QUANTIZED_MB", raising=False)
    assert keep_quantized_bytes() == KEEP_QUANTIZED_BYTES == 256 * 2**20
    monkeypatch.setenv("QUANTLENS_KEEP_QUANTIZED_MB", "1.5")
    assert keep_quantized_bytes() == 3 * 2**19
    monkeypatch.setenv("QUANTLENS_KEEP_QUANTIZED_MB", "lots")
    with pytest.raises(QuantlensError, match="QUANTLENS_KEEP_QUANTIZED_MB='lots': give a number of megabytes"):
        keep_quantized_bytes()


@pytest.mark.parametrize("engine", ["cone", "cone-lowmem"])
def test_a_sweep_over_the_budget_gives_bitwise_the_same_cells(monkeypatch, engine):
    model, data = tiny_lm(), token_data()
    kw = dict(w_bits=(3, 6), metric="perplexity", granularity="per-group-8", engine=engine)
    monkeypatch.delenv("QUANTLENS_KEEP_QUANTIZED_MB", raising=False)
    kept = ql.analyze(model, data, **kw)
    monkeypatch.setenv("QUANTLENS_KEEP_QUANTIZED_MB", "0")  # nothing kept: every weight quantized on each use
    remade = ql.analyze(model, data, **kw)
    assert _cells(remade) == _cells(kept)


def test_a_cone_gives_the_float_weight_back_after_a_quantized_run():
    from quantlens.data.batches import iterate as it

    graph = capture(tiny_lm())
    runner = ConeRunner(graph)
    batch = next(iter(it(token_data())))[0]
    _, cache = runner.float_pass(batch)
    for i in (0, len(runner.layers) - 1):
        w = runner.float_weight(i)
        ev = runner.run(cache, i, torch.round(w * 8) / 8)
        assert ev.output is not None
        assert runner.cones[i].qlayer.qweight.data_ptr() == w.data_ptr()  # no quantized weight kept alive


# ---- the noise sums in chunks -------------------------------------------------------------
def _naive_sq(t, minus=None):
    d = t if minus is None else t - minus
    return d.double().reshape(t.shape[0], -1).pow(2).sum(1)


@pytest.mark.parametrize("shape, chunk", [((3, 5), 1000), ((6, 4, 5), 40), ((6, 4, 5), 7), ((2, 50, 33), 64), ((1, 997), 10)])
def test_per_sample_sq_in_chunks_equals_the_whole_tensor_formula(shape, chunk):
    from quantlens.engine.accumulate import per_sample_sq

    g = torch.Generator().manual_seed(1)
    t, m = torch.randn(*shape, generator=g) * 30, torch.randn(*shape, generator=g) * 30
    row = t[0].numel()
    for got, want in ((per_sample_sq(t, chunk=chunk), _naive_sq(t)), (per_sample_sq(t, m, chunk=chunk), _naive_sq(t, m))):
        assert got.dtype == torch.float64 and got.shape == (shape[0],)
        if row <= chunk:  # whole rows per chunk: the same reduction per row, bit for bit
            assert torch.equal(got, want)
        else:
            # a row split in pieces is a sum of partial float64 sums: each of the two summation
            # orders has relative error at most ~(log2(row) + pieces) x 2^-53 for these positive
            # terms (~1e-15 for a 1000-element row); 1e-13 leaves a margin of 100
            assert torch.allclose(got, want, rtol=1e-13, atol=0)
    assert torch.equal(per_sample_sq(t), _naive_sq(t))  # below the default chunk: unchanged


def test_chunked_noise_changes_the_cells_by_rounding_only(monkeypatch):
    from quantlens.engine import accumulate

    model, data = tiny_lm(), token_data()
    kw = dict(w_bits=(3, 6), metric="perplexity", granularity="per-group-8")
    whole = ql.analyze(model, data, **kw)
    monkeypatch.setattr(accumulate, "SQ_CHUNK", 5)  # every output row in pieces
    pieces = ql.analyze(model, data, **kw)
    for a, b in zip(whole.cells, pieces.cells):
        assert (a.layer, a.w_bits, a.metric) == (b.layer, b.w_bits, b.metric)  # the metric does not use it
        assert b.noise == pytest.approx(a.noise, rel=1e-13, abs=0) and b.sqnr_db == pytest.approx(a.sqnr_db, rel=1e-13)


# ---- heap trim interval -------------------------------------------------------------------
def test_heap_trim_interval_from_the_environment(monkeypatch):
    monkeypatch.delenv("QUANTLENS_HEAP_TRIM_S", raising=False)
    assert memory.trim_interval() == memory.TRIM_INTERVAL_S == 0.25
    monkeypatch.setenv("QUANTLENS_HEAP_TRIM_S", "2")
    assert memory.trim_interval() == 2.0
    monkeypatch.setenv("QUANTLENS_HEAP_TRIM_S", "off")
    assert memory.trim_interval() == float("inf") and memory.trim_heap() is False
    for bad in ("soon", "-1"):
        monkeypatch.setenv("QUANTLENS_HEAP_TRIM_S", bad)
        with pytest.raises(QuantlensError, match="QUANTLENS_HEAP_TRIM_S=.*: give seconds between heap trims"):
            memory.trim_interval()
    monkeypatch.setenv("QUANTLENS_HEAP_TRIM_S", "0")
    if memory._libc() is not None:
        assert memory.trim_heap() is True and memory.trim_heap() is True  # every call


def test_the_estimate_counts_its_gradient_pass_and_refuses_it_before_it_starts(monkeypatch):
    """The gradient pass holds per swept weight its batch gradient (and, for nll/perplexity, the true
    labels' gradient): 1 or 2 times the weights, plus the autograd graph of one micro-batch; a run where that does not fit is refused with one line before any backward."""
    from quantlens.parallel import SweepRecipe
    from quantlens.sweep import estimate
    from quantlens.sweep.api import make_config

    model, data = tiny_lm(), token_data()
    inputs = next(iterate(data))[0]
    weights = {}
    for metric, k in (("perplexity", 2), ("token_kl", 1)):
        sweep = SweepRecipe(model, next(iterate(data)), make_config([4], a_bits=None, granularity="per-group-8"), metric,
                            "cpu", None, None, "cone", None).build()
        w = sum(sweep.runner.float_weight(i).numel() * 4 for i in sweep.layer_ids)
        fixed, per_sample, samples = estimate.gradient_pass_bytes(sweep, inputs)
        assert fixed == k * w and per_sample == int(estimate.GRAPH_PER_SAMPLE * sweep.sample_bytes) > 0
        assert samples == min(estimate.micro_batch(inputs, "x"), inputs.batch_size) == 3  # 12 tokens: the whole batch
        weights[metric] = (sweep, fixed + samples * per_sample)
    sweep, need = weights["perplexity"]
    passes = []
    monkeypatch.setattr(estimate, "timed_first_order", lambda *a, **k: passes.append(1) or ({}, 0.0))
    monkeypatch.setattr(memory, "available_bytes", lambda: need - 1)
    with pytest.raises(QuantlensError, match=r"the estimate's gradient pass needs about .* of weight gradients \+ .* per sample.*"
                                             r"is available") as e:
        estimate.estimate_sweep(sweep, data, k=1)
    assert "\n" not in str(e.value) and passes == []
    monkeypatch.setattr(memory, "available_bytes", lambda: need)
    estimate.check_gradient_pass(sweep, data)  # fits exactly
