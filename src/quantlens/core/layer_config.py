"""Per-layer quantization settings for a whole network: :class:`LayerQuant` and :class:`QuantConfig`.

A :class:`QuantConfig` maps each layer name to a :class:`LayerQuant` (weight bits, activation
bits, weight granularity, weight range estimator, fixes). Every layer it names is quantized
at once by :func:`quantlens.network.measure.quantize_network`; a layer it does not name stays
float. Weights use the symmetric signed grid (or, with ``symmetric=False``, the unsigned affine
one), activations the asymmetric unsigned grid
(see :class:`~quantlens.quant.spec.QuantSpec`); ``a_bits=None`` keeps a layer's input and output
in float, ``w_bits=None`` its weights.

``quant_config.json`` carries ``"schema": "quantlens/quant-config-v1"``.

Example:
    >>> cfg = QuantConfig.uniform(["conv1", "fc"], w_bits=8).with_layer("fc", w_bits=4, fixes=("sawb",))
    >>> cfg.layer("fc").w_bits, cfg.fix_layers()
    (4, {'sawb': ['fc']})
    >>> QuantConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Optional, Union

from quantlens.core import jsonio
from quantlens.quant.spec import Granularity, PerTensor, QuantSpec, check_bits, parse_granularity
from quantlens.errors import QuantlensError
from quantlens.quant.ranges import check_estimator

__all__ = ["LayerQuant", "QuantConfig", "CONFIG_SCHEMA"]

CONFIG_SCHEMA = "quantlens/quant-config-v1"


_FIELDS = ("w_bits", "a_bits", "granularity", "estimator", "fixes", "convention", "symmetric")


@dataclass(frozen=True, init=False)
class LayerQuant:
    """How one layer is quantized in a full-network configuration: two specs and its fixes.

    Attributes:
        weight: the weight quantizer (a :class:`~quantlens.quant.spec.QuantSpec`: bits,
            symmetric or affine grid, granularity, range estimator, convention), or None for
            float weights.
        act: the quantizer of the layer's input (on its own edge) and of its output after the
            activation (asymmetric, per tensor), or None for float activations. Its range
            estimator is the config's ``act_estimator``.
        fixes: names of registered fixes applied to this layer (see :mod:`quantlens.fixes`).

    Built from specs (``LayerQuant(weight=QuantSpec(bits=4), act=None)``) or from the plain
    fields of ``quant_config.json`` (``LayerQuant(w_bits=4, a_bits=8, granularity=...)``, the
    same thing). ``w_bits``, ``a_bits``, ``granularity``, ``estimator``, ``convention`` and
    ``symmetric`` read the specs. :meth:`weight_spec` and :meth:`act_spec` are the one place a
    layer's quantizers are described: the sweep, the whole-network measurer and the fixes all
    build theirs from them.

    Example:
        >>> LayerQuant(w_bits=4, a_bits=None) == LayerQuant(weight=QuantSpec(bits=4), act=None)
        True
    """

    weight: Optional[QuantSpec]
    act: Optional[QuantSpec]
    fixes: tuple[str, ...]

    def __init__(
        self,
        w_bits: Optional[int] = 8,
        a_bits: Optional[int] = 8,
        granularity: Optional[Granularity] = None,
        estimator: str = "minmax",
        fixes: Iterable[str] = (),
        convention: str = "quantlens",
        symmetric: bool = True,
        *,
        weight: Union[QuantSpec, None, str] = "fields",
        act: Union[QuantSpec, None, str] = "fields",
    ) -> None:
        if isinstance(weight, str):  # from the plain fields
            if w_bits is not None:
                check_bits(w_bits, "weight bits")
            weight = None if w_bits is None else QuantSpec(
                bits=int(w_bits), symmetric=symmetric, granularity=granularity or PerTensor(), estimator=estimator,
                convention=convention)
        if isinstance(act, str):
            if a_bits is not None:
                check_bits(a_bits, "activation bits")
            act = None if a_bits is None else QuantSpec(bits=int(a_bits), symmetric=False, granularity=PerTensor(),
                                                        convention=convention)
        for what, spec in (("weight", weight), ("act", act)):
            if spec is not None and not isinstance(spec, QuantSpec):
                raise QuantlensError(f"LayerQuant {what}= takes a QuantSpec or None, got {type(spec).__name__}")
        if act is not None and not isinstance(act.granularity, PerTensor):
            raise QuantlensError("activations are quantized per-tensor; per-channel/per-group is for weights")
        object.__setattr__(self, "weight", weight)
        object.__setattr__(self, "act", act)
        object.__setattr__(self, "fixes", tuple(str(f) for f in fixes))

    # the plain fields, read from the specs
    @property
    def w_bits(self) -> Optional[int]:
        return None if self.weight is None else self.weight.bits

    @property
    def a_bits(self) -> Optional[int]:
        return None if self.act is None else self.act.bits

    @property
    def granularity(self) -> Granularity:
        return PerTensor() if self.weight is None else self.weight.granularity

    @property
    def estimator(self) -> str:
        return "minmax" if self.weight is None else self.weight.estimator

    @property
    def convention(self) -> str:
        spec = self.weight or self.act
        return "quantlens" if spec is None else spec.convention

    @property
    def symmetric(self) -> bool:
        return True if self.weight is None else self.weight.symmetric

    def fields(self) -> dict:
        """The plain fields (the keywords of the constructor)."""
        return {f: getattr(self, f) for f in _FIELDS}

    def replace(self, **changes: object) -> "LayerQuant":
        """A copy with some plain fields changed (``lq.replace(w_bits=4, fixes=("sawb",))``)."""
        unknown = sorted(set(changes) - set(_FIELDS))
        if unknown:
            raise QuantlensError(f"LayerQuant has no field {', '.join(unknown)}: use {', '.join(_FIELDS)}")
        if set(changes) <= {"fixes"}:  # the specs as they are (a format included)
            return LayerQuant(weight=self.weight, act=self.act, fixes=changes.get("fixes", self.fixes))  # type: ignore[arg-type]
        return LayerQuant(**{**self.fields(), **changes})  # type: ignore[arg-type]

    def weight_spec(self, estimator: Optional[str] = None) -> Optional[QuantSpec]:
        """The layer's weight quantizer (``estimator`` overrides its range estimator), or None."""
        if self.weight is None or estimator is None or estimator == self.weight.estimator:
            return self.weight
        return replace(self.weight, estimator=estimator)

    def act_spec(self, estimator: str = "minmax") -> Optional[QuantSpec]:
        """The layer's activation quantizer with the config's range ``estimator``, or None."""
        if self.act is None:
            return None
        return self.act if self.act.estimator == estimator else replace(self.act, estimator=estimator)

    def to_dict(self) -> dict:
        d = {
            "w_bits": self.w_bits,
            "a_bits": self.a_bits,
            "granularity": str(self.granularity),
            "estimator": self.estimator,
            "fixes": list(self.fixes),
            "symmetric": self.symmetric,
        }
        if self.convention != "quantlens":
            d["convention"] = self.convention
        if self.weight is not None and self.weight.format is not None:
            d["format"] = self.weight.format
        if self.act is not None and self.act.format is not None:
            d["a_format"] = self.act.format
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "LayerQuant":
        try:
            a = None if d.get("a_bits") is None else int(d["a_bits"])
            act: Optional[QuantSpec] = None if a is None else QuantSpec(bits=a, symmetric=False)
            if d.get("a_format") is not None:
                act = QuantSpec(format=str(d["a_format"]), symmetric=False)
            if d.get("format") is not None:
                return cls(weight=QuantSpec(format=str(d["format"])), act=act, fixes=tuple(str(f) for f in d.get("fixes", ())))
            if d.get("a_format") is not None:
                weight = None if d.get("w_bits") is None else QuantSpec(
                    bits=int(d["w_bits"]), symmetric=bool(d.get("symmetric", True)),
                    granularity=parse_granularity(str(d.get("granularity", "per-tensor"))), estimator=str(d.get("estimator", "minmax")),
                    convention=str(d.get("convention", "quantlens")))
                return cls(weight=weight, act=act, fixes=tuple(str(f) for f in d.get("fixes", ())))
            return cls(
                w_bits=None if d.get("w_bits") is None else int(d["w_bits"]),
                a_bits=None if d.get("a_bits") is None else int(d["a_bits"]),
                granularity=parse_granularity(str(d.get("granularity", "per-tensor"))),
                estimator=str(d.get("estimator", "minmax")),
                fixes=tuple(str(f) for f in d.get("fixes", ())),
                convention=str(d.get("convention", "quantlens")),
                symmetric=bool(d.get("symmetric", True)),
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise QuantlensError(f"bad layer entry in the quantization config: {e}") from None


@dataclass(frozen=True)
class QuantConfig:
    """Per-layer settings of a full-network quantization (see module docstring).

    ``layers`` is a tuple of ``(layer name, LayerQuant)`` pairs (immutable, ordered);
    ``act_estimator`` is the range estimator of every activation quantizer.
    """

    layers: tuple[tuple[str, LayerQuant], ...] = ()
    act_estimator: str = "minmax"

    def __post_init__(self) -> None:
        if isinstance(self.layers, Mapping):
            object.__setattr__(self, "layers", tuple(self.layers.items()))
        names = [n for n, _ in self.layers]
        if len(set(names)) != len(names):
            raise QuantlensError(f"the quantization config names a layer twice: {names}")
        check_estimator(self.act_estimator, activations=True)

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        names: Iterable[str],
        w_bits: Optional[int] = 8,
        a_bits: Optional[int] = 8,
        granularity: Union[str, Granularity] = "per-tensor",
        estimator: str = "minmax",
        act_estimator: str = "minmax",
        convention: str = "quantlens",
        symmetric: bool = True,
    ) -> "QuantConfig":
        """Every named layer with the same settings."""
        g = parse_granularity(granularity) if isinstance(granularity, str) else granularity
        lq = LayerQuant(w_bits, a_bits, g, estimator, convention=convention, symmetric=symmetric)
        return cls(tuple((n, lq) for n in names), act_estimator)

    def with_layer(self, name: str, **changes: object) -> "QuantConfig":
        """A copy with ``name``'s settings changed (``w_bits=4``, ``fixes=("sawb",)``, ...)."""
        d = dict(self.layers)
        d[name] = d.get(name, LayerQuant()).replace(**changes)
        return replace(self, layers=tuple(d.items()))

    def with_fix(self, fix: str, names: Iterable[str]) -> "QuantConfig":
        """A copy with ``fix`` appended to the fixes of each named layer (once)."""
        out = self
        for n in names:
            lq = out.layer(n)
            if fix not in lq.fixes:
                out = out.with_layer(n, fixes=lq.fixes + (fix,))
        return out

    # ---- queries -----------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.layers]

    def layer(self, name: str) -> LayerQuant:
        for n, lq in self.layers:
            if n == name:
                return lq
        raise QuantlensError(f"the quantization config has no layer {name!r}; it has: {', '.join(self.names)}")

    def get(self, name: str) -> Optional[LayerQuant]:
        return dict(self.layers).get(name)

    def fix_layers(self) -> dict[str, list[str]]:
        """``{fix name: [layers it applies to]}`` in first-seen order."""
        out: dict[str, list[str]] = {}
        for n, lq in self.layers:
            for f in lq.fixes:
                out.setdefault(f, []).append(n)
        return out

    def check_layers(self, known: Iterable[str]) -> None:
        """Raise a one-line error if the config names a layer the network does not have."""
        known_set = set(known)
        missing = [n for n in self.names if n not in known_set]
        if missing:
            raise QuantlensError(
                f"the quantization config names unknown layer(s) {', '.join(missing)}; layers are: {', '.join(sorted(known_set))}"
            )

    # ---- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema": CONFIG_SCHEMA,
            "act_estimator": self.act_estimator,
            "layers": {n: lq.to_dict() for n, lq in self.layers},
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "QuantConfig":
        if d.get("schema") != CONFIG_SCHEMA:
            raise QuantlensError(f"not a quantlens quantization config (schema {d.get('schema')!r}, expected {CONFIG_SCHEMA!r})")
        layers = d.get("layers")
        if not isinstance(layers, Mapping):
            raise QuantlensError("the quantization config has no 'layers' mapping")
        return cls(tuple((str(n), LayerQuant.from_dict(v)) for n, v in layers.items()), str(d.get("act_estimator", "minmax")))

    def to_json(self, path: Union[str, os.PathLike, None] = None, extra: Optional[dict] = None) -> str:
        """The JSON text (with ``extra`` fields merged in); also written (atomically) to ``path`` if given."""
        return jsonio.dump({**self.to_dict(), **(extra or {})}, path)

    @classmethod
    def from_json(cls, source: Union[str, os.PathLike]) -> "QuantConfig":
        """From JSON text, a path to ``quant_config.json``, or its directory."""
        return cls.from_dict(jsonio.load(source, CONFIG_SCHEMA, "quantization config", "quant_config.json"))

