"""Mapping batches (tokenizer dicts) through the resumable cache and the Ray backend: the same
cells as one serial run, and a cache made from other keyword arguments is refused."""

from __future__ import annotations

import pytest
import ray

import quantlens as ql
from support.helpers import FailingData, same_cells
from support.tokens import TokenNet, token_data

KW = dict(w_bits=[3, 8], metric="top1", output_key="logits")


def test_cache_resumes_and_checks_mapping_batches(tmp_path):
    net, data = TokenNet().eval(), token_data()
    serial = ql.analyze(net, data, **KW)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="crash"):  # passes: 1 sample, 2 calibration, 3 the sweep
        ql.analyze(net, FailingData(data, 2, 3), cache=cache, **KW)
    other = [dict(b, scale=2.0) for b in data]  # a non-tensor keyword changed: another computation
    with pytest.raises(ql.QuantlensError, match="different data"):
        ql.analyze(net, other, cache=cache, **KW)
    with pytest.warns(ql.QuantlensWarning, match="2 batch"):
        resumed = ql.analyze(net, data, cache=cache, **KW)
    assert resumed.cells == serial.cells and resumed.num_samples == serial.num_samples


@pytest.mark.slow
@pytest.mark.ray
def test_ray_shards_mapping_batches():
    net, data = TokenNet().eval(), token_data()
    serial = ql.analyze(net, data, **KW)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        sharded = ql.analyze(net, data, backend="ray", **KW)
    finally:
        ray.shutdown()
    same_cells(sharded, serial, rel=1e-6)
