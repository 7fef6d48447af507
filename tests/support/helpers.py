"""The one closeness check of the tests: numbers, cells and tensors against an oracle.

``close(a, b, rel, abs_)`` is ``|a - b| <= max(rel * max(|a|, |b|), abs_)`` for finite numbers;
infinities must be equal and two NaNs (or two ``None``) count as the same value.
``rel_err(t, ref)`` is ``||t - ref|| / ||ref||`` for tensors, and ``assert_sqnr`` bounds the SQNR
``10 log10(||ref||^2 / ||t - ref||^2)`` from below.

Example:
    >>> close(1.0, 1.0 + 1e-7), close(float("inf"), float("inf")), close(None, None)
    (True, True, True)
    >>> assert_close(2.0, 2.0000001, rel=1e-6)
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import torch

__all__ = ["close", "assert_close", "rel_err", "assert_sqnr", "assert_cells_close"]


def close(a: Optional[float], b: Optional[float], rel: float = 1e-6, abs_: float = 0.0) -> bool:
    if a is None or b is None:
        return a is None and b is None
    a, b = float(a), float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= max(rel * max(abs(a), abs(b)), abs_)


def assert_close(a: Any, b: Any, rel: float = 1e-6, abs_: float = 0.0, what: str = "") -> None:
    assert close(a, b, rel, abs_), f"{what}: {a!r} != {b!r} (rel {rel}, abs {abs_})"


def rel_err(t: torch.Tensor, ref: torch.Tensor) -> float:
    """``||t - ref|| / ||ref||`` (0 when both are zero)."""
    t, ref = t.detach().double(), ref.detach().double()
    den = float(ref.norm())
    num = float((t - ref).norm())
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def assert_sqnr(t: torch.Tensor, ref: torch.Tensor, min_db: float) -> None:
    """``t`` is ``ref`` up to noise at least ``min_db`` dB below it."""
    e = rel_err(t, ref)
    db = math.inf if e == 0 else -20.0 * math.log10(e)
    assert db >= min_db, f"SQNR {db:.1f} dB < {min_db} dB"


def assert_cells_close(a: Iterable[Any], b: Iterable[Any], fields: Iterable[str], rel: float = 1e-6, abs_: float = 0.0) -> None:
    """Cells (objects or dicts) in the same order with the same ``(layer, w_bits)`` and close ``fields``."""
    a, b = list(a), list(b)
    assert len(a) == len(b), (len(a), len(b))
    get = lambda c, k: c[k] if isinstance(c, dict) else getattr(c, k)  # noqa: E731
    for x, y in zip(a, b):
        assert (get(x, "layer"), get(x, "w_bits")) == (get(y, "layer"), get(y, "w_bits"))
        for k in fields:
            assert_close(get(x, k), get(y, k), rel, abs_, f"{get(x, 'layer')}@{get(x, 'w_bits')} {k}")


def same_cells(a: Any, b: Any, rel: float = 1e-5, names: dict | None = None) -> None:
    """Every cell of ``a`` equals ``b``'s: noise to ``rel``, the metric exactly."""
    names = names or {}
    assert a.cells and len(a.cells) <= len(b.cells)
    for ca in a.cells:
        cb = b.cell(names.get(ca.layer, ca.layer), ca.w_bits)
        assert abs(ca.noise - cb.noise) <= rel * max(abs(cb.noise), 1e-30), (ca.layer, ca.w_bits, ca.noise, cb.noise)
        assert ca.metric == cb.metric, (ca.layer, ca.w_bits, ca.metric, cb.metric)


class FailingData:
    """A list of batches whose ``fail_on_iter``-th pass raises at batch ``fail_at`` (a crash)."""

    def __init__(self, batches, fail_at: int, fail_on_iter: int) -> None:
        self.batches, self.fail_at, self.fail_on_iter, self.iters = batches, fail_at, fail_on_iter, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        self.iters += 1
        for k, b in enumerate(self.batches):
            if self.iters == self.fail_on_iter and k == self.fail_at:
                raise RuntimeError("crash")
            yield b
