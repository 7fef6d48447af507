"""How the experiments quantize every layer: one :class:`ExperimentSpec` instead of repeated keywords.

``additivity``, ``fix`` and ``plan`` quantize whole networks at the *columns* they choose: a
weight bit-width (``4``: the integer grid at the spec's granularity) or a named number format
(``"nvfp4"``, ``"fp8-e4m3"``, ``"int4-g128"``, :mod:`quantlens.quant.formats`). The rest of each
layer's quantization (activation bits or activation format, weight granularity, the tool's
convention) is the spec's. A sweep given to an experiment (``sweep=``, ``--results``) must have
measured what the experiment assumes: :meth:`ExperimentSpec.check_sweep` says in one line where
it differs (columns, activations, granularity, convention, metric).

Example:
    >>> spec = ExperimentSpec(a_bits=None, granularity="per-group-32")
    >>> spec.layer(4).w_bits, spec.layer(4).a_bits, str(spec.layer(4).granularity)
    (4, None, 'per-group-32')
    >>> ExperimentSpec(a_format="nvfp4").layer("nvfp4").weight.format
    'nvfp4'
    >>> ExperimentSpec().sweep_config(["nvfp4", 8]).formats
    ('nvfp4', 'int8')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

from quantlens.core.layer_config import LayerQuant
from quantlens.core.sweep_config import SweepConfig, parse_a_format
from quantlens.errors import QuantlensError
from quantlens.quant.spec import Granularity, PerTensor, QuantSpec, check_bits, parse_granularity

__all__ = ["ExperimentSpec", "Column", "parse_column"]

#: A column of an experiment: a weight bit-width or a format name.
Column = Union[int, str]


def parse_column(value: Any, option: str = "the column") -> Column:
    """A weight bit-width (``4``, ``"4"``) or a registered format's canonical name (``"NVFP4"`` ->
    ``"nvfp4"``); one line for anything else."""
    if isinstance(value, bool):
        raise QuantlensError(f"{option}: expected a bit-width (2..16) or a format name, got {value!r}")
    if isinstance(value, int):
        return check_bits(value, option)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return check_bits(int(text), option)
    from quantlens.quant.formats import get_format

    return get_format(text).name  # one line listing the formats if unknown


@dataclass(frozen=True)
class ExperimentSpec:
    """Activations (bits, a format, or float), weight granularity and quantizer convention of an experiment.

    ``a_format`` (``nvfp4``, ``mxfp8``, ``fp8-e4m3``, ``int8``, ``none``) replaces ``a_bits``
    the way ``--a-format`` does in a sweep (:class:`~quantlens.core.sweep_config.SweepConfig`).
    """

    a_bits: Optional[int] = 8
    granularity: Union[str, Granularity] = "per-tensor"
    convention: str = "quantlens"
    a_format: Optional[str] = None

    def __post_init__(self) -> None:
        if self.a_format is not None:
            fmt, bits = parse_a_format(self.a_format)
            object.__setattr__(self, "a_format", fmt)
            object.__setattr__(self, "a_bits", bits)
        if self.a_bits is not None:
            check_bits(self.a_bits, "activation bits")
        if isinstance(self.granularity, str):
            object.__setattr__(self, "granularity", parse_granularity(self.granularity))
        QuantSpec(convention=self.convention)  # one line if unknown

    def act_spec(self) -> Optional[QuantSpec]:
        """The activation quantizer of every layer (None: float activations)."""
        if self.a_format is not None:
            return QuantSpec(format=self.a_format, symmetric=False)
        if self.a_bits is None:
            return None
        return QuantSpec(bits=self.a_bits, symmetric=False, granularity=PerTensor(), convention=self.convention)

    def layer(self, column: Optional[Column]) -> LayerQuant:
        """One layer at ``column`` (a weight bit-width or a format name; None: float weights) under this spec."""
        if column is None:
            return LayerQuant(weight=None, act=self.act_spec())
        col = parse_column(column)
        if isinstance(col, str):
            return LayerQuant(weight=QuantSpec(format=col), act=self.act_spec())
        weight = QuantSpec(bits=col, granularity=self.granularity, convention=self.convention)  # type: ignore[arg-type]
        return LayerQuant(weight=weight, act=self.act_spec())

    def format_column(self, column: Column) -> str:
        """``column`` as a format name: a bit-width becomes the integer format of this spec's
        granularity (``int4``, ``int4-channel``, ``int4-g128``)."""
        col = parse_column(column)
        if isinstance(col, str):
            return col
        return QuantSpec(bits=col, granularity=self.granularity).format_name  # type: ignore[arg-type]

    def sweep_config(self, columns: Iterable[Column]) -> SweepConfig:
        """The layer-wise sweep of these columns under this spec: over bit-widths, or, when any
        column is a format, over formats (bit-widths then become integer formats, :meth:`format_column`)."""
        cols = [parse_column(c) for c in columns]
        act = QuantSpec(bits=8, symmetric=False, granularity=PerTensor(), convention=self.convention)
        if any(isinstance(c, str) for c in cols):
            return SweepConfig(w_bits=(), a_bits=self.a_bits, act=act, formats=tuple(dict.fromkeys(self.format_column(c) for c in cols)),
                               a_format=self.a_format)
        return SweepConfig(
            w_bits=tuple(int(b) for b in cols), a_bits=self.a_bits,
            weight=QuantSpec(bits=8, granularity=self.granularity, convention=self.convention),  # type: ignore[arg-type]
            act=act, a_format=self.a_format,
        )

    def sweep_column(self, sweep: Any, column: Column) -> Column:
        """The key of ``column`` in ``sweep``: a bit-width, or in a sweep over formats the format it stands for."""
        col = parse_column(column)
        return self.format_column(col) if getattr(sweep, "is_format_sweep", False) else col

    def plan_columns(self, config: Any, names: Iterable[str]) -> dict[str, Column]:
        """Each layer's column in a plan's config (a :class:`~quantlens.core.layer_config.QuantConfig`):
        its weight format, else its bits, in the order of ``names``; a layer with float weights is left
        out. One line for a layer the network does not have, a config that quantizes none, or integer
        weights of another granularity than this spec's (the sweep's cells would not be the plan's)."""
        names = list(names)
        config.check_layers(names)
        out: dict[str, Column] = {}
        for n in names:
            lq = config.get(n)
            if lq is None or lq.weight is None:
                continue
            if lq.weight.format is not None:
                out[n] = lq.weight.format
                continue
            if str(lq.granularity) != str(self.granularity):
                raise QuantlensError(f"the plan quantizes layer {n} with {lq.granularity} weights, the experiment with "
                                     f"{self.granularity}: give --granularity {lq.granularity}")
            out[n] = lq.weight.bits
        if not out:
            raise QuantlensError("the plan quantizes no layer's weights: nothing to measure it against")
        return out

    def config_columns(self, config: Any) -> list[Column]:
        """The distinct columns of a plan's config (:meth:`plan_columns`), in first-seen order: what a sweep must hold."""
        return list(dict.fromkeys(self.plan_columns(config, config.names).values()))

    def check_sweep(self, sweep: Any, need_bits: Iterable[Column], metric: Any = None, where: str = "the sweep") -> None:
        """Raise one line if ``sweep`` (a SweepResult) lacks the columns ``need_bits`` or was measured
        under other activations, granularity, convention or metric than this experiment's."""
        need = [parse_column(c) for c in need_bits]
        missing = [c for c in need if sweep.find(sweep.layer_names[0], self.sweep_column(sweep, c)) is None] if sweep.layer_names else need
        if missing:
            raise QuantlensError(f"{where}: the sweep has no cells at {_cols(missing)} (it has {_cols(sweep.w_bits)})")
        cfg = sweep.config or {}
        if "a_bits" in cfg and cfg["a_bits"] != self.a_bits or cfg.get("a_format") != self.a_format:
            raise QuantlensError(f"{where}: the sweep used {_acts(cfg.get('a_bits'), cfg.get('a_format'))} activations, not "
                                 f"{_acts(self.a_bits, self.a_format)} (give the experiment the sweep's activations, or sweep again)")
        weight = cfg.get("weight") or {}
        gran = weight.get("granularity")
        if gran is not None and gran != str(self.granularity) and not getattr(sweep, "is_format_sweep", False):
            raise QuantlensError(f"{where}: the sweep used {gran} weights, not {self.granularity} (give the experiment "
                                 "the sweep's granularity, or sweep again)")
        conv = weight.get("convention", "quantlens")
        if conv != self.convention:
            raise QuantlensError(f"{where}: the sweep used the {conv} convention, not {self.convention}")
        if isinstance(metric, str) and sweep.metric_name != metric:
            raise QuantlensError(f"{where}: the sweep measured {sweep.metric_name}, not {metric}")


def _cols(cols: Iterable[Column]) -> str:
    """``4, 8 bits`` for bit-widths, ``nvfp4, 4 bits`` for a mix."""
    cs = list(cols)
    if cs and all(isinstance(c, int) for c in cs):
        return ", ".join(str(c) for c in cs) + " bits"
    return ", ".join(f"{c} bits" if isinstance(c, int) else str(c) for c in cs)


def _acts(a: Optional[int], fmt: Optional[str] = None) -> str:
    if fmt is not None:
        return fmt
    return "float" if a is None else f"{a}-bit"
