"""The description of a number format: a frozen :class:`Format`, no tensors, no code.

A format quantizes a tensor viewed as a matrix ``[rows, K]`` (``K``: the reduction axis, see
:mod:`.tiles`) in *scopes* that share one scale:

* ``tensor``: one scale for the whole tensor;
* ``row``: one scale per row (a weight's output channel; an activation's token row);
* ``block``: one scale per row and per ``block`` consecutive values of the reduction axis;
* ``tile``: one scale per ``block x block`` tile of a 2-D weight (``1 x block`` for activations);
* ``none``: a plain cast, no scale.

``family`` picks the kernel (``int``, ``fp8``, ``mx``, ``nvfp4``, ``float``, ``ggml``), ``element`` the values
(``int4``, ``e4m3``, ``e2m1``, ``bf16``, ...) and ``scale_rule`` how a scope's ``amax`` becomes a scale:

* ``amax/qmax``: ``s = amax / (2^(b-1) - 1)`` (integers);
* ``amax/max``: ``s = amax / max_elem`` in float32 (FP8);
* ``pow2-floor``: ``X = 2^(floor(log2 amax) - emax_elem)``, an E8M0 power of two (OCP MX);
* ``pow2-rceil``: ``X = 2^ceil(log2(amax / max_elem))`` (MX, never clips);
* ``e4m3*fp32``: an E4M3 block scale times a float32 tensor scale (NVFP4);
* ``none``: no scale;
* ggml's GGUF types (:mod:`.ggml`): ``absmax/127``, ``signed-max/-8``, ``signed-max/-16``,
  ``min-max/15``, ``e8m0-floor``, and the K-quants' searches ``qx-search``, ``qkx2-search``.

Example:
    >>> f = Format("mxfp4", "mx", "e2m1", "block", 32, "pow2-floor", 4.25)
    >>> f.bits, f.effective_bits
    (4, 4.25)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from quantlens.errors import QuantlensError
from quantlens.quant.formats.elements import ELEMENTS

__all__ = ["Format", "Family", "Scope", "FAMILIES", "SCOPES", "SCALE_RULES"]

Family = Literal["int", "fp8", "mx", "nvfp4", "float", "ggml"]
Scope = Literal["tensor", "row", "block", "tile", "none"]

FAMILIES: tuple[str, ...] = ("int", "fp8", "mx", "nvfp4", "float", "ggml")
SCOPES: tuple[str, ...] = ("tensor", "row", "block", "tile", "none")
SCALE_RULES: dict[str, str] = {
    "int": "amax/qmax",
    "fp8": "amax/max",
    "mx": "pow2-floor pow2-rceil",
    "nvfp4": "e4m3*fp32",
    "float": "none",
    "ggml": "absmax/127 signed-max/-8 signed-max/-16 min-max/15 e8m0-floor qx-search qkx2-search",
}
_FLOATS = {"bf16": 16, "fp16": 16}
_GGML_BITS = {"q8_0": 8, "q6_k": 6, "q5_0": 5, "q4_1": 4, "q4_0": 4, "q4_k": 4, "mxfp4": 4}


@dataclass(frozen=True)
class Format:
    """A number format (see the module docstring for the fields' vocabulary).

    Attributes:
        name: the registered name (``mxfp4``, ``int4-g128``, ...).
        family: which kernel quantizes it.
        element: the element type: ``int{b}``, ``e4m3``/``e5m2``/``e3m2``/``e2m3``/``e2m1``, ``bf16``/``fp16``.
        scope: which values share a scale.
        block: values per scale along the reduction axis for ``block``/``tile`` scopes, else 0.
        scale_rule: how a scope's ``amax`` becomes its scale.
        effective_bits: storage bits per value, scales included (``b + 16 / N`` for ``int{b}-g{N}``).
    """

    name: str
    family: Family
    element: str
    scope: Scope
    block: int
    scale_rule: str
    effective_bits: float

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise QuantlensError(f"format {self.name!r}: family must be one of {', '.join(FAMILIES)}, got {self.family!r}")
        if self.scope not in SCOPES:
            raise QuantlensError(f"format {self.name!r}: scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.scale_rule not in SCALE_RULES[self.family].split():
            raise QuantlensError(
                f"format {self.name!r}: a {self.family} format's scale rule is {SCALE_RULES[self.family].replace(' ', ' or ')}, got {self.scale_rule!r}"
            )
        if (self.scope in ("block", "tile")) != (self.block > 0):
            raise QuantlensError(f"format {self.name!r}: block must be > 0 exactly for block and tile scopes, got {self.block}")
        if (self.family == "float") != (self.scope == "none"):
            raise QuantlensError(f"format {self.name!r}: only the float family (a plain cast) has scope 'none'")
        _ = self.bits  # validates the element

    @property
    def bits(self) -> int:
        """Bits of one element (``b`` for ``int{b}``, 8 for E4M3, 4 for E2M1, 16 for bf16)."""
        if self.family == "int":
            tail = self.element[3:] if self.element.startswith("int") else ""
            if not tail.isdigit() or not 2 <= int(tail) <= 16:
                raise QuantlensError(f"format {self.name!r}: an int element is int2..int16, got {self.element!r}")
            return int(tail)
        if self.family == "float":
            if self.element not in _FLOATS:
                raise QuantlensError(f"format {self.name!r}: a float element is bf16 or fp16, got {self.element!r}")
            return _FLOATS[self.element]
        if self.family == "ggml":
            if self.element not in _GGML_BITS:
                raise QuantlensError(f"format {self.name!r}: a ggml element is one of {', '.join(_GGML_BITS)}, got {self.element!r}")
            return _GGML_BITS[self.element]
        if self.element not in ELEMENTS:
            raise QuantlensError(f"format {self.name!r}: element must be one of {', '.join(ELEMENTS)}, got {self.element!r}")
        if self.family == "nvfp4" and self.element != "e2m1":
            raise QuantlensError(f"format {self.name!r}: NVFP4 elements are e2m1, got {self.element!r}")
        return ELEMENTS[self.element].bits

    def describe(self) -> str:
        """The format's rule in one line (for ``quantlens info``)."""
        where = _SCOPE_TEXT[self.scope].format(n=self.block)
        bits = f"{self.effective_bits:g} bits/value"
        if self.family == "int":
            b = self.bits
            return (
                f"{self.name}: signed int{b} q in [{-(2 ** (b - 1))}, {2 ** (b - 1) - 1}], s = amax / {2 ** (b - 1) - 1} {where} "
                f"(s = 1 where amax = 0), q = clamp(round_half_even(x * (1/s))), value q*s; {bits}"
            )
        if self.family == "ggml":
            return f"{self.name}: GGUF {self.element.upper()}, ggml's reference quantizer ({_GGML_TEXT[self.element]}) {where}; {bits}"
        if self.family == "float":
            return f"{self.name}: a cast to {self.element}, round half to even, saturating at the largest finite value; {bits}"
        e = ELEMENTS[self.element]
        elem = f"{e.label} elements (max {e.max:g}, round half to even, saturating)"
        if self.family == "fp8":
            return f"{self.name}: {elem}, fp32 scale s = amax / {e.max:g} {where} (s = 1 where it is 0), q = {e.name}(x / s), value q*s; {bits}"
        if self.family == "mx":
            if self.scale_rule == "pow2-floor":
                rule = f"X = 2^(floor(log2 amax) - {e.emax})"
            else:
                rule = f"X = 2^ceil(log2(amax / {e.max:g})) (never clips)"
            return f"{self.name}: OCP MX, {elem}, one E8M0 scale {rule} {where}, exponent clamped to [-127, 127], q = {e.name}(x / X); {bits}"
        return (
            f"{self.name}: {elem}, tensor scale s2 = amax / 2688 (fp32) and an E4M3 block scale "
            f"s_b = e4m3(amax_b / (6 s2)) {where}, q = e2m1(x / (s_b s2)), value q s_b s2; {bits}"
        )


_SCOPE_TEXT = {
    "tensor": "per tensor",
    "row": "per output row (per token row for activations)",
    "block": "per {n} values along the reduction axis",
    "tile": "per {n}x{n} weight tile (1x{n} for activations)",
    "none": "",
}
_GGML_TEXT = {
    "q8_0": "d = amax/127, q = roundf(x * (1/d)), halves away from zero, fp16 d",
    "q4_0": "d = m/-8 with m the signed value of largest magnitude, q = min(15, trunc(x * (1/d) + 8.5)), halves up, fp16 d",
    "q5_0": "d = m/-16 with m the signed value of largest magnitude, q = min(31, trunc(x * (1/d) + 16.5)), halves up, fp16 d",
    "q4_1": "d = (max - min)/15, q = min(15, trunc((x - min) * (1/d) + 0.5)), fp16 d and min",
    "mxfp4": "E8M0 scale 2^(floor(log2 amax) - 2), E2M1 levels, ties towards zero",
    "q6_k": "make_qx_quants per 16, int8 sub-block scales, fp16 d, levels rne in [-32, 31]",
    "q4_k": "make_qkx2_quants per 32, 6-bit sub-block scales and mins, fp16 d and dmin, levels rne in [0, 15]",
}
