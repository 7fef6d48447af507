"""How the experiments quantize every layer: one :class:`ExperimentSpec` instead of repeated keywords.

``additivity``, ``fix`` and ``plan`` quantize whole networks at the bit-widths they choose; the
rest of each layer's quantization (activation bits, weight granularity, the tool's convention)
is the spec's. A sweep given to an experiment (``sweep=``, ``--results``) must have measured
what the experiment assumes: :meth:`ExperimentSpec.check_sweep` says in one line where it
differs (bit-widths, activation bits, granularity, convention, metric).

Example:
    >>> spec = ExperimentSpec(a_bits=None, granularity="per-group-32")
    >>> spec.layer(4).w_bits, spec.layer(4).a_bits, str(spec.layer(4).granularity)
    (4, None, 'per-group-32')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union

from quantlens.core.layer_config import LayerQuant
from quantlens.core.sweep_config import SweepConfig
from quantlens.errors import QuantlensError
from quantlens.quant.spec import Granularity, PerTensor, QuantSpec, check_bits, parse_granularity

__all__ = ["ExperimentSpec"]


@dataclass(frozen=True)
class ExperimentSpec:
    """Activation bits (None: float), weight granularity and quantizer convention of an experiment."""

    a_bits: Optional[int] = 8
    granularity: Union[str, Granularity] = "per-tensor"
    convention: str = "quantlens"

    def __post_init__(self) -> None:
        if self.a_bits is not None:
            check_bits(self.a_bits, "activation bits")
        if isinstance(self.granularity, str):
            object.__setattr__(self, "granularity", parse_granularity(self.granularity))
        QuantSpec(convention=self.convention)  # one line if unknown

    def layer(self, w_bits: Optional[int]) -> LayerQuant:
        """One layer at ``w_bits`` weights (None: float weights) under this spec."""
        return LayerQuant(w_bits, self.a_bits, self.granularity, convention=self.convention)  # type: ignore[arg-type]

    def sweep_config(self, w_bits: Iterable[int]) -> SweepConfig:
        """The layer-wise sweep of these bit-widths under this spec."""
        return SweepConfig(
            w_bits=tuple(int(b) for b in w_bits), a_bits=self.a_bits,
            weight=QuantSpec(bits=8, granularity=self.granularity, convention=self.convention),  # type: ignore[arg-type]
            act=QuantSpec(bits=8, symmetric=False, granularity=PerTensor(), convention=self.convention),
        )

    def check_sweep(self, sweep: Any, need_bits: Iterable[int], metric: Any = None, where: str = "the sweep") -> None:
        """Raise one line if ``sweep`` (a SweepResult) lacks ``need_bits`` or was measured under
        other activation bits, granularity, convention or metric than this experiment's."""
        missing = [b for b in need_bits if b not in sweep.w_bits]
        if missing:
            raise QuantlensError(f"{where}: the sweep has no cells at {missing} bits (it has {list(sweep.w_bits)})")
        cfg = sweep.config or {}
        if "a_bits" in cfg and cfg["a_bits"] != self.a_bits:
            raise QuantlensError(f"{where}: the sweep used {_bits(cfg['a_bits'])} activations, not {_bits(self.a_bits)} "
                                 "(give the experiment the sweep's a_bits, or sweep again)")
        weight = cfg.get("weight") or {}
        gran = weight.get("granularity")
        if gran is not None and gran != str(self.granularity):
            raise QuantlensError(f"{where}: the sweep used {gran} weights, not {self.granularity} (give the experiment "
                                 "the sweep's granularity, or sweep again)")
        conv = weight.get("convention", "quantlens")
        if conv != self.convention:
            raise QuantlensError(f"{where}: the sweep used the {conv} convention, not {self.convention}")
        if isinstance(metric, str) and sweep.metric_name != metric:
            raise QuantlensError(f"{where}: the sweep measured {sweep.metric_name}, not {metric}")


def _bits(a: Optional[int]) -> str:
    return "float" if a is None else f"{a}-bit"
