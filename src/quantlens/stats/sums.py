"""Mergeable sums of paired per-sample scores (see :mod:`quantlens.stats.intervals`).

    n,   R = sum_n r_n,   Q = sum_n q_n,   S = sum_n (r_n - q_n)^2

``r_n`` is a sample's score under the float reference, ``q_n`` under quantization. The sums of
two shards add, so a sharded or resumed run has the sums (and the interval) of a serial one.

Example:
    >>> s = PairedSums(); s.update([1.0, 1.0, 0.0], [1.0, 0.0, 0.0]); s.state()
    {'n': 3, 'ref': 2.0, 'quant': 1.0, 'sq': 1.0, 'valid': True}
"""

from __future__ import annotations

from typing import Any, Optional

from quantlens.stats.degradation import degradation

__all__ = ["PairedSums"]


class PairedSums:
    """Mergeable sums of paired scores: ``n``, ``R = sum r``, ``Q = sum q``, ``S = sum (r - q)^2``.

    ``valid`` is False for sums restored from a state written before intervals existed; they
    merge to invalid and give no interval.
    """

    __slots__ = ("n", "ref", "quant", "sq", "valid")

    def __init__(self, n: int = 0, ref: float = 0.0, quant: float = 0.0, sq: float = 0.0, valid: bool = True) -> None:
        self.n, self.ref, self.quant, self.sq, self.valid = int(n), float(ref), float(quant), float(sq), bool(valid)

    def update(self, r: Any, q: Any) -> None:
        """Add per-sample scores ``r`` (reference) and ``q`` (quantized): 1-d float64 tensors or arrays."""
        import torch

        r_t = torch.as_tensor(r, dtype=torch.float64).reshape(-1)
        q_t = torch.as_tensor(q, dtype=torch.float64).reshape(-1)
        self.n += int(r_t.numel())
        self.ref += float(r_t.sum())
        self.quant += float(q_t.sum())
        self.sq += float((r_t - q_t).pow(2).sum())

    def merge(self, other: "PairedSums") -> "PairedSums":
        return PairedSums(self.n + other.n, self.ref + other.ref, self.quant + other.quant, self.sq + other.sq,
                          self.valid and other.valid)

    def state(self) -> dict:
        return {"n": self.n, "ref": self.ref, "quant": self.quant, "sq": self.sq, "valid": self.valid}

    @classmethod
    def from_state(cls, d: Optional[dict]) -> "PairedSums":
        if not d:
            return cls(valid=False)
        return cls(d["n"], d["ref"], d["quant"], d["sq"], bool(d.get("valid", True)))

    def degradation(self, higher_is_better: bool) -> float:
        """The degradation on these samples alone: the sign rule on the two means."""
        if self.n == 0:
            return float("nan")
        return degradation(self.ref / self.n, self.quant / self.n, higher_is_better)
