"""Quantization configuration: small frozen dataclasses validated on construction.

A :class:`QuantSpec` describes how one tensor is fake-quantized (bits, symmetry,
granularity, range estimator); :class:`~quantlens.core.sweep_config.SweepConfig` builds a
layer-wise sweep from two of them.

Integer grids (``b`` bits):

* symmetric (signed):   ``q in [-2^(b-1), 2^(b-1) - 1]``, zero point 0
* asymmetric (unsigned): ``q in [0, 2^b - 1]``

Example:
    >>> QuantSpec(bits=4).qmin, QuantSpec(bits=4).qmax
    (-8, 7)
    >>> QuantSpec(bits=8, symmetric=False).qmax
    255
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Optional, Union

if TYPE_CHECKING:
    import torch

from quantlens.errors import QuantlensError
from quantlens.quant.registry import check_estimator

__all__ = [
    "PerTensor",
    "PerChannel",
    "PerGroup",
    "Granularity",
    "QuantSpec",
    "parse_granularity",
    "check_bits",
    "parse_a_bits",
    "MIN_BITS",
    "MAX_BITS",
    "DEFAULT_PERCENTILE",
]

MIN_BITS = 2
MAX_BITS = 16
#: The one percentile default: the ``percentile`` range estimator (weights and activations) and
#: the ``percentile`` clipping fix keep the central 99.99% of the values (``|w|``'s 99.99th
#: percentile for symmetric weights), clipping only rare outliers.
DEFAULT_PERCENTILE = 99.99


@dataclass(frozen=True)
class PerTensor:
    """One scale (and zero point) for the whole tensor."""

    def __str__(self) -> str:
        return "per-tensor"


@dataclass(frozen=True)
class PerChannel:
    """One scale per slice along ``axis`` (the output channel of a weight)."""

    axis: int = 0

    def __str__(self) -> str:
        return "per-channel"


@dataclass(frozen=True)
class PerGroup:
    """One scale per output channel and per block of ``group_size`` input channels.

    Layers whose input-channel count is not a multiple of ``group_size`` (a depthwise conv
    has one input channel per group) use one group per output channel, i.e. per-channel.
    """

    group_size: int

    def __post_init__(self) -> None:
        if self.group_size < 1:
            raise QuantlensError(f"group size must be >= 1, got {self.group_size}")

    def __str__(self) -> str:
        return f"per-group-{self.group_size}"


Granularity = Union[PerTensor, PerChannel, PerGroup]


def parse_granularity(text: str) -> Granularity:
    """Parse ``per-tensor``, ``per-channel`` or ``per-group-N``."""
    t = text.strip().lower().replace("_", "-")
    if t == "per-tensor":
        return PerTensor()
    if t == "per-channel":
        return PerChannel()
    if t.startswith("per-group"):
        tail = t[len("per-group") :].lstrip("-:")
        try:
            return PerGroup(int(tail))
        except ValueError:
            pass
    raise QuantlensError(
        f"unknown granularity {text!r}: use per-tensor, per-channel or per-group-N (e.g. per-group-32)"
    )


def check_bits(bits: int, what: str = "bits") -> int:
    """Return ``bits`` if it is an int in [MIN_BITS, MAX_BITS], else raise a one-line error."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise QuantlensError(f"{what} must be an integer in {MIN_BITS}..{MAX_BITS}, got {bits!r}")
    if not MIN_BITS <= bits <= MAX_BITS:
        raise QuantlensError(f"{what} must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return bits


def parse_a_bits(text: str) -> Optional[int]:
    """An activation bit-width from text: ``none`` (or ``float``, ``fp32``, ``off``) keeps activations in float."""
    if str(text).strip().lower() in ("none", "float", "fp32", "off"):
        return None
    try:
        b = int(text)
    except ValueError:
        raise QuantlensError(f"--a-bits {text!r}: expected an integer in 2..16 or 'none'") from None
    return check_bits(b, "activation bits")


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is fake-quantized.

    Attributes:
        bits: integer width, 2..16.
        symmetric: signed grid with zero point 0 (``scale = max|x| / (2^(b-1) - 1)``) if True,
            else unsigned affine grid over ``[min(0, lo), max(0, hi)]``
            (``scale = (hi - lo) / (2^b - 1)``, ``zero_point = clamp(round(-lo / scale), 0, 2^b - 1)``).
        granularity: :class:`PerTensor`, :class:`PerChannel` or :class:`PerGroup`.
        estimator: name of a registered range estimator (``minmax``, ``percentile``, ``mse``, ``sawb``).
        percentile: the percentile used by the ``percentile`` estimator.
        convention: a tool's quantizer convention (``quantlens``, ``onnxruntime``, ``tflite``,
            ``torch-ao``; see :mod:`quantlens.quant.conventions`): it sets the integer grid
            (``qmin``/``qmax``) and the symmetric scale rule for each bit-width.
        format: a named number format of :mod:`quantlens.quant.formats` (``nvfp4``, ``mxfp4``,
            ``fp8-e4m3``, ``int4-g128``, ...). When set, the format's rule quantizes the tensor
            (its own scales and blocks) and ``bits``, ``granularity``, ``estimator`` and
            ``convention`` are not used.
    """

    bits: int = 8
    symmetric: bool = True
    granularity: Granularity = field(default_factory=PerTensor)
    estimator: str = "minmax"
    percentile: float = DEFAULT_PERCENTILE
    convention: str = "quantlens"
    format: Optional[str] = None

    def __post_init__(self) -> None:
        if self.format is not None:
            from quantlens.quant.formats import get_format

            fmt = get_format(self.format)  # one line if unknown
            object.__setattr__(self, "format", fmt.name)
            object.__setattr__(self, "bits", fmt.bits)  # the element's bits (e2m1: 4, e4m3: 8, bf16: 16)
        check_bits(self.bits)
        from quantlens.quant.conventions import get_convention

        get_convention(self.convention)  # one line if unknown
        if not 50.0 < self.percentile <= 100.0:
            raise QuantlensError(f"percentile must be in (50, 100], got {self.percentile}")
        check_estimator(self.estimator)

    @property
    def qmin(self) -> int:
        return self._grid()[0]

    @property
    def qmax(self) -> int:
        return self._grid()[1]

    @property
    def half_range(self) -> bool:
        """Symmetric scale ``max|x| / ((qmax - qmin) / 2)`` (onnxruntime's int4, torch.ao) instead of ``max|x| / qmax``."""
        return self._grid()[2]

    def _grid(self) -> tuple[int, int, bool]:
        if self.convention == "quantlens":
            return (-(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1, False) if self.symmetric else (0, 2**self.bits - 1, False)
        from quantlens.quant.conventions import get_convention

        return get_convention(self.convention).grid(self.bits, self.symmetric)

    def qparams(self, lo: "torch.Tensor", hi: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
        """Scale and zero point of the range ``[lo, hi]`` on this spec's grid and scale rule."""
        from quantlens.quant.primitives import qparams_from_range

        return qparams_from_range(lo, hi, self.qmin, self.qmax, self.symmetric, self.half_range)

    def with_bits(self, bits: int) -> "QuantSpec":
        return replace(self, bits=bits)

    def to_dict(self) -> dict:
        d = {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "granularity": str(self.granularity),
            "estimator": self.estimator,
            "percentile": self.percentile,
        }
        if self.convention != "quantlens":
            d["convention"] = self.convention
        if self.format is not None:
            d["format"] = self.format
        return d

    @property
    def format_name(self) -> str:
        """The format this spec quantizes in: its ``format``, else the integer grid's name
        (``int4``, ``int4-channel``, ``int4-g128``; ``uint8`` for an affine grid)."""
        if self.format is not None:
            return self.format
        base = f"int{self.bits}" if self.symmetric else f"uint{self.bits}"
        g = self.granularity
        if isinstance(g, PerChannel):
            return base + "-channel"
        if isinstance(g, PerGroup):
            return f"{base}-g{g.group_size}"
        return base

    @classmethod
    def from_dict(cls, d: dict) -> "QuantSpec":
        return cls(
            bits=int(d["bits"]),
            symmetric=bool(d["symmetric"]),
            granularity=parse_granularity(d["granularity"]),
            estimator=d.get("estimator", "minmax"),
            percentile=float(d.get("percentile", DEFAULT_PERCENTILE)),
            convention=str(d.get("convention", "quantlens")),
            format=d.get("format"),
        )


def default_weight_spec(bits: int = 8) -> QuantSpec:
    """Weights: symmetric, signed, per-tensor, min/max."""
    return QuantSpec(bits=bits, symmetric=True)


def default_act_spec(bits: int = 8) -> QuantSpec:
    """Activations: asymmetric, per-tensor, min/max over the calibration data."""
    return QuantSpec(bits=bits, symmetric=False)
