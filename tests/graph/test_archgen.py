"""Proof that the paths agree: on generated networks (tests/archgen.py), the cone engine on
the fx capture, the hook engine and the cone engine on the torch.export capture all give the
naive oracle's cells (tests/oracle.py): noise and SQNR to 1e-5 relative, the metric exactly.

The first nets run in the fast loop (``-m "not slow"``); all of them run in the full suite.
"""

from __future__ import annotations

import functools

import pytest
import torch
from support.archgen import CLASSES, generate
from support.helpers import close
from support.oracle import naive_sweep

import quantlens as ql

N_NETS = 100
N_FAST = 10
N_FAST_EXPORT = 2  # export capture costs seconds a net: the rest run in the full suite
BITS = (3, 8)
PATHS = {
    "cone-fx": dict(engine="cone", capture="fx"),
    "hooks": dict(engine="hooks"),
    "cone-export": dict(engine="cone", capture="export"),
}


def _close(a: float, b: float, rel: float = 1e-5, abs_: float = 1e-12) -> bool:
    return close(a, b, rel, abs_)


@functools.lru_cache(maxsize=None)
def _case(seed: int):
    net = generate(seed)
    g = torch.Generator().manual_seed(10_000 + seed)
    data = [(torch.randn(3, *net.input_shape, generator=g), torch.randint(0, CLASSES, (3,), generator=g)) for _ in range(2)]
    return net, data, naive_sweep(net.model, data, BITS)


def _params():
    out = []
    for seed in range(N_NETS):
        for path in PATHS:
            marks = [pytest.mark.slow] if seed >= (N_FAST_EXPORT if path == "cone-export" else N_FAST) else []
            out.append(pytest.param(path, seed, marks=marks, id=f"{path}-{seed}"))
    return out


@pytest.mark.parametrize("path,seed", _params())
def test_path_gives_oracle_cells(path, seed):
    net, data, ref = _case(seed)
    r = ql.analyze(net.model, data, w_bits=BITS, a_bits=8, metric="agreement", **PATHS[path])
    where = f"net {seed} on {path}:\n{net.source}"
    assert [(l.name, l.activation) for l in r.layers] == list(net.layers), where
    assert len(r.cells) == len(net.layers) * len(BITS), where
    for c in r.cells:
        noise, sqnr, agree = ref[(c.layer, c.w_bits)]
        assert _close(c.noise, noise), (c.layer, c.w_bits, c.noise, noise, where)
        assert _close(c.sqnr_db, sqnr), (c.layer, c.w_bits, c.sqnr_db, sqnr, where)
        assert c.metric == agree, (c.layer, c.w_bits, c.metric, agree, where)
