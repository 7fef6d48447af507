"""The low-memory cone engine (block inputs cached, recomputation inside the block) gives the same cells."""

from __future__ import annotations

import pytest
import torch

import quantlens as ql
from support.lm_models import tiny_lm, token_data
from quantlens.data.batches import iterate
from quantlens.engine.runner import ConeRunner, block_starts
from quantlens.graph.capture import capture


def _cache_bytes(runner, batch):
    _, cache = runner.float_pass(batch)
    return sum(v.numel() * v.element_size() for v in cache.values() if isinstance(v, torch.Tensor))


def test_low_memory_mode_gives_identical_cells_with_a_smaller_cache():
    model, data = tiny_lm(), token_data()
    r = ql.analyze(model, data, w_bits=(3, 6), metric="perplexity", granularity="per-group-8")
    low = ql.analyze(model, data, w_bits=(3, 6), metric="perplexity", granularity="per-group-8", engine="cone-lowmem")
    assert r.engine == "cone" and low.engine == "cone-lowmem"
    for a, b in zip(r.cells, low.cells):
        assert (a.layer, a.w_bits) == (b.layer, b.w_bits)
        assert a.metric == b.metric and a.noise == b.noise and a.mean_shift == pytest.approx(b.mean_shift, rel=1e-9)
    for a, b in zip(r.layers, low.layers):
        assert a.input_range == b.input_range and a.output_range == b.output_range
    graph = capture(tiny_lm())
    starts = block_starts(graph)
    names = [l.name for l in graph.layers]
    assert starts[names.index("layers.1.down_proj")] == starts[names.index("layers.1.q_proj")]
    batch = next(iter(iterate(data)))[0]
    full, lowmem = ConeRunner(graph), ConeRunner(capture(tiny_lm()), low_memory=True)
    assert _cache_bytes(lowmem, batch) < 0.6 * _cache_bytes(full, batch)


@pytest.mark.slow
def test_low_memory_gpt2_token_kl_equals_the_cone_engine():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2, use_cache=False)
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(0, 64, (2, 12), generator=g)} for _ in range(2)]
    r = ql.analyze(m, data, w_bits=(4,), metric="token_kl", output_key="logits")
    low = ql.analyze(m, data, w_bits=(4,), metric="token_kl", output_key="logits", engine="cone-lowmem")
    assert [(c.layer, c.metric, c.noise) for c in r.cells] == [(c.layer, c.metric, c.noise) for c in low.cells]
