"""A layer-wise sweep's quantization: every layer x every weight bit-width at one activation bit-width.

Built from two :class:`~quantlens.quant.spec.QuantSpec` templates (weights, activations) whose
``bits`` is replaced by the swept value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from quantlens.errors import QuantlensError
from quantlens.quant.registry import check_estimator
from quantlens.quant.spec import PerChannel, PerGroup, QuantSpec, check_bits, default_act_spec, default_weight_spec

__all__ = ["SweepConfig"]


@dataclass(frozen=True)
class SweepConfig:
    """A layer-wise sweep: every layer x every weight bit-width at one activation bit-width.

    ``a_bits=None`` keeps activations in float. ``weight`` and ``act`` are templates whose
    ``bits`` is replaced by the swept value.
    """

    w_bits: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    a_bits: Optional[int] = 8
    weight: QuantSpec = field(default_factory=default_weight_spec)
    act: QuantSpec = field(default_factory=default_act_spec)

    def __post_init__(self) -> None:
        if len(self.w_bits) == 0:
            raise QuantlensError("w_bits is empty: give at least one weight bit-width, e.g. 3,4,5,6,7,8")
        for b in self.w_bits:
            check_bits(b, "weight bits")
        if len(set(self.w_bits)) != len(self.w_bits):
            raise QuantlensError(f"w_bits has duplicates: {list(self.w_bits)}")
        if self.a_bits is not None:
            check_bits(self.a_bits, "activation bits")
        if isinstance(self.act.granularity, (PerChannel, PerGroup)):
            raise QuantlensError("activations are quantized per-tensor; per-channel/per-group is for weights")
        check_estimator(self.act.estimator, activations=True)  # before calibration, not after it

    def weight_spec(self, bits: int) -> QuantSpec:
        return self.weight.with_bits(bits)

    def act_spec(self) -> Optional[QuantSpec]:
        return None if self.a_bits is None else self.act.with_bits(self.a_bits)

    def to_dict(self) -> dict:
        return {
            "w_bits": list(self.w_bits),
            "a_bits": self.a_bits,
            "weight": self.weight.to_dict(),
            "act": self.act.to_dict(),
        }
