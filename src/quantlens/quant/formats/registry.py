"""The number-format registry: names (some parametric) -> :class:`~.format.Format`; families -> kernels.

Formats register a *template* with :func:`register_format`; ``{b}`` and ``{N}`` in a template
match integers, which the factory receives as keyword arguments (``int{b}-g{N}`` matches
``int4-g128`` and calls ``factory(b=4, N=128)``). Names are matched case-insensitively, with
``_`` read as ``-``. Kernels register per family with :func:`register_kernel`; a kernel maps a
float32 tile view (see :mod:`.tiles`) to its quantized-dequantized values.

Example:
    >>> get_format("int4-g128").effective_bits
    4.125
    >>> "mxfp4" in formats()
    True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union

from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.quant.formats.format import Format

__all__ = ["register_format", "formats", "get_format", "register_kernel", "kernel_for", "Kernel", "FormatLike"]

FormatLike = Union[str, Format]


class Kernel(Protocol):
    """``kernel(tiles, fmt, global_scale) -> tiles`` on a float32 ``[R/r, r, K/c, c]`` view."""

    def __call__(self, tiles: Tensor, fmt: Format, global_scale: Optional[Tensor]) -> Tensor: ...


@dataclass(frozen=True)
class _Entry:
    template: str
    pattern: "re.Pattern[str]"
    factory: Callable[..., Format]


_FORMATS: list[_Entry] = []
_KERNELS: dict[str, Kernel] = {}


def _compile(template: str) -> "re.Pattern[str]":
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if i % 2 == 0 else rf"(?P<{p}>\d+)" for i, p in enumerate(parts))
    return re.compile(regex)


def register_format(template: str) -> Callable[[Callable[..., Format]], Callable[..., Format]]:
    """Decorator: register ``factory(**ints) -> Format`` for names matching ``template``."""

    def deco(factory: Callable[..., Format]) -> Callable[..., Format]:
        if any(e.template == template for e in _FORMATS):
            raise ValueError(f"number format {template!r} is already registered")
        _FORMATS.append(_Entry(template, _compile(template.replace("_", "-")), factory))
        return factory

    return deco


def formats() -> list[str]:
    """Registered format names and templates, in registration order (``int{b}``, ..., ``fp16``)."""
    return [e.template for e in _FORMATS]


def get_format(name: FormatLike) -> Format:
    """The :class:`Format` called ``name`` (a :class:`Format` is returned as is).

    Raises :class:`~quantlens.errors.QuantlensError` (one line, listing the known names) if no
    template matches, or the factory's own one-line error (e.g. ``int1``: bits out of range).
    """
    if isinstance(name, Format):
        return name
    if not isinstance(name, str):
        raise QuantlensError(f"a number format is a name such as 'mxfp4' or a Format, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    for entry in _FORMATS:
        m = entry.pattern.fullmatch(key)
        if m:
            return entry.factory(**{k: int(v) for k, v in m.groupdict().items()})
    raise QuantlensError(
        f"unknown number format {name!r}: known formats are {', '.join(formats())} ({{b}} = 2..16 bits, {{N}} = values per scale)"
    )


def register_kernel(family: str) -> Callable[[Kernel], Kernel]:
    """Decorator: the kernel that quantizes every format of ``family``."""

    def deco(kernel: Kernel) -> Kernel:
        _KERNELS[family] = kernel
        return kernel

    return deco


def kernel_for(fmt: Format) -> Kernel:
    """The kernel registered for ``fmt.family``."""
    return _KERNELS[fmt.family]
