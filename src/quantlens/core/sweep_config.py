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

__all__ = ["SweepConfig", "parse_a_format"]


def parse_a_format(value: object) -> tuple[Optional[str], Optional[int]]:
    """``(a_format, a_bits)`` of an activation format: ``none`` (float: ``(None, None)``), ``int{b}``
    (the integer grid at ``b`` bits: ``(None, b)``) or a named format of :mod:`quantlens.quant.formats`
    (``fp8-e4m3``, ``mxfp8``, ``nvfp4``, ...: its name and element bits)."""
    name = str(value).strip().lower()
    if name in ("none", "float", "fp32", "off"):
        return None, None
    if name.startswith("int") and name[3:].isdigit():
        return None, int(name[3:])
    from quantlens.quant.formats import get_format

    f = get_format(name)
    return f.name, f.bits


@dataclass(frozen=True)
class SweepConfig:
    """A layer-wise sweep: every layer x every weight bit-width (or format) at one activation setting.

    ``a_bits=None`` keeps activations in float. ``weight`` and ``act`` are templates whose
    ``bits`` is replaced by the swept value. With ``formats`` (names of
    :mod:`quantlens.quant.formats`: ``nvfp4``, ``mxfp4``, ``fp8-e4m3``, ``int4-g128``, ...) the
    sweep's columns are those formats instead of ``w_bits`` (which must then be left empty),
    ordered by effective bits; :attr:`columns` is the one axis either way.
    """

    w_bits: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    a_bits: Optional[int] = 8
    weight: QuantSpec = field(default_factory=default_weight_spec)
    act: QuantSpec = field(default_factory=default_act_spec)
    formats: tuple[str, ...] = ()
    a_format: Optional[str] = None

    def __post_init__(self) -> None:
        if self.a_format is not None:
            self._set_a_format()
        if self.formats:
            from quantlens.quant.formats import get_format

            fmts = [get_format(f) for f in self.formats]  # one line if unknown
            names = [f.name for f in fmts]
            if len(set(names)) != len(names):
                raise QuantlensError(f"formats has duplicates: {names}")
            if self.w_bits and tuple(self.w_bits) != (3, 4, 5, 6, 7, 8):
                raise QuantlensError("give --formats or --w-bits, not both: int{b} formats stand for bit-widths "
                                     "(--formats int4,int8)")
            order = sorted(range(len(fmts)), key=lambda k: (fmts[k].effective_bits, k))
            object.__setattr__(self, "formats", tuple(names[k] for k in order))
            object.__setattr__(self, "w_bits", ())
        elif len(self.w_bits) == 0:
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

    @property
    def columns(self) -> tuple:
        """The swept axis: the format names, else the weight bit-widths."""
        return self.formats or self.w_bits

    def weight_spec(self, bits: "int | str") -> QuantSpec:
        """The weight quantizer of one column (a bit-width, or a format name)."""
        if isinstance(bits, str):
            return QuantSpec(format=bits)
        return self.weight.with_bits(bits)

    def _set_a_format(self) -> None:
        fmt, bits = parse_a_format(self.a_format)
        object.__setattr__(self, "a_format", fmt)
        object.__setattr__(self, "a_bits", bits)

    def act_spec(self) -> Optional[QuantSpec]:
        if self.a_format is not None:
            return QuantSpec(format=self.a_format, symmetric=False, estimator=self.act.estimator)
        return None if self.a_bits is None else self.act.with_bits(self.a_bits)

    def to_dict(self) -> dict:
        d = {
            "w_bits": list(self.w_bits),
            "a_bits": self.a_bits,
            "weight": self.weight.to_dict(),
            "act": self.act.to_dict(),
        }
        if self.formats:
            d["formats"] = list(self.formats)
        if self.a_format is not None:
            d["a_format"] = self.a_format
        return d
