"""Typed, frozen results of a layer-wise sweep, and their JSON / CSV / DataFrame forms.

``results.json`` carries ``"schema": "quantlens/sweep-v1"``; fields may be added, never
renamed or dropped without a new schema.

Example:
    >>> r = SweepResult.from_json("results.json")          # doctest: +SKIP
    >>> [c.layer for c in r.worst(bits=4, k=3)]            # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Any, Optional, Union

from quantlens.stats.measurement import Measured
from quantlens.core import jsonio
from quantlens.stats.degradation import shares, summed_degradation
from quantlens.errors import QuantlensError
from quantlens.core.jsonio import num as _num

__all__ = ["column_label", "bits_label", "weights_label", "SCHEMA", "WeightStats", "LayerInfo", "Cell", "SweepResult"]

SCHEMA = "quantlens/sweep-v1"


@dataclass(frozen=True)
class WeightStats:
    """Statistics of a layer's (BN-folded) float weights, for reports.

    ``outliers_3sigma`` counts weights with ``|w - mean| > 3 std``; ``hist_counts`` has
    ``len(hist_edges) - 1`` bins over ``[min, max]``; ``grid`` names the quantization grid the
    weights already sit on (``int4-g32-asym``: a dequantized checkpoint, :mod:`quantlens.quant.grids`),
    ``""`` for none.
    """

    min: float
    max: float
    mean: float
    std: float
    outliers_3sigma: int
    hist_counts: list[int] = field(default_factory=list)
    hist_edges: list[float] = field(default_factory=list)
    grid: str = ""

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))

    @property
    def absmax_over_std(self) -> float:
        return self.absmax / self.std if self.std > 0 else float("inf")


@dataclass(frozen=True)
class LayerInfo:
    """One layer of the analysed network and the statistics the reports need."""

    index: int
    name: str
    op: str
    params: int
    kind: str = "conv"
    activation: Optional[str] = None
    weight: Optional[WeightStats] = None
    input_range: Optional[tuple[float, float]] = None
    output_range: Optional[tuple[float, float]] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerInfo":
        w = d.get("weight")
        return cls(
            index=int(d["index"]),
            name=str(d["name"]),
            op=str(d["op"]),
            params=int(d["params"]),
            kind=d.get("kind", "conv"),
            activation=d.get("activation"),
            weight=WeightStats(**{k: (_num(v) if k in ("min", "max", "mean", "std") else v) for k, v in w.items()})
            if w
            else None,
            input_range=tuple(d["input_range"]) if d.get("input_range") else None,  # type: ignore[arg-type]
            output_range=tuple(d["output_range"]) if d.get("output_range") else None,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Cell(Measured):
    """One (layer, weight bits) measurement of the sweep.

    * ``noise = mean_n ||y_n - y_i,n||^2``
    * ``sqnr_db = 10 log10(sum_n ||y_n||^2 / sum_n ||y_n - y_i,n||^2)``
    * ``metric = H(y_i)``; ``degradation = H(y) - H(y_i)`` (sign flipped for lower-is-better)
    * ``mean_shift``: mean over output channels of ``|E[o_i - o]| / std(o)`` for the layer's
      own output ``o`` (the bias shift of the paper's section 4.4)
    * ``w_clip``: the largest ``|range|`` of the weight quantizer (shows clipping)
    * ``ci_low`` / ``ci_high``: the paired 95% interval on ``degradation``
      (:mod:`quantlens.stats.intervals`); NaN (``null`` in JSON) for a metric without a rule
    * ``samples``: the samples this cell was measured on (fewer than the sweep's when
      ``early_stop``: an adaptive sweep stopped adding batches to it)
    * ``noise_weights`` / ``noise_input`` / ``noise_output``: the output noise with only that
      source quantized (``--split-noise``, :mod:`quantlens.sweep.split`); NaN when not split
    * ``estimate``: the first-order estimate of the cell (``--estimate``, expected KL increase,
      :mod:`quantlens.sweep.estimate`); with ``--estimate`` the exact fields are NaN except
      for the cells re-measured to check it
    """

    layer: str
    w_bits: int
    a_bits: Optional[int]
    noise: float
    sqnr_db: float
    metric: float
    degradation: float
    mean_shift: float = float("nan")
    w_clip: float = float("nan")
    ci_low: float = jsonio.NAN
    ci_high: float = jsonio.NAN
    samples: int = 0
    early_stop: bool = False
    noise_weights: float = jsonio.NAN
    noise_input: float = jsonio.NAN
    noise_output: float = jsonio.NAN
    estimate: float = jsonio.NAN
    format: str = ""

    @property
    def noise_parts(self) -> dict[str, float]:
        """``{source: noise}`` of the split sources that were measured."""
        parts = {"weights": self.noise_weights, "input": self.noise_input, "output": self.noise_output}
        return {k: v for k, v in parts.items() if not math.isnan(v)}

    @property
    def noise_source(self) -> Optional[str]:
        """The source with the largest noise alone (``weights``, ``input``, ``output``), None if not split."""
        parts = self.noise_parts
        return max(parts, key=lambda k: parts[k]) if parts else None


    @classmethod
    def from_dict(cls, d: dict) -> "Cell":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("noise", "sqnr_db", "metric", "degradation", "mean_shift", "w_clip", "ci_low", "ci_high",
                  "noise_weights", "noise_input", "noise_output", "estimate"):
            if k in kw:
                kw[k] = _num(kw[k])
        return cls(**kw)


@dataclass(frozen=True)
class SweepResult:
    """The layers x bit-widths table of a layer-wise quantization analysis."""

    metric_name: str
    higher_is_better: bool
    baseline: float
    num_samples: int
    layers: tuple[LayerInfo, ...]
    cells: tuple[Cell, ...]
    config: dict = field(default_factory=dict)
    model: str = ""
    engine: str = "cone"
    elapsed_s: float = float("nan")
    extra: dict = field(default_factory=dict)

    # ---- queries -----------------------------------------------------------------------
    @cached_property
    def is_format_sweep(self) -> bool:
        """Whether the columns are named formats (``--formats``) rather than bit-widths."""
        return bool(self.config.get("formats"))

    def key_of(self, c: Cell) -> "int | str":
        """The column of cell ``c``: its format in a sweep over formats, else its bits."""
        return c.format if self.is_format_sweep else c.w_bits

    @cached_property
    def w_bits(self) -> list:
        """The sweep's columns: its weight bit-widths (ints), or, for a sweep over formats, the
        format names ordered by effective bits (:attr:`Cell.column`)."""
        if not self.is_format_sweep:
            return sorted({c.w_bits for c in self.cells})
        from quantlens.quant.formats import get_format

        names = list(dict.fromkeys(c.format for c in self.cells))
        return sorted(names, key=lambda n: (get_format(n).effective_bits, names.index(n)))

    @property
    def columns(self) -> list:
        """The same as :attr:`w_bits`."""
        return self.w_bits

    def column(self, key: "int | str") -> "int | str":
        """The column ``key`` names: a bit-width, a format name, or in a sweep over formats an
        integer ``b`` for the format ``int{b}``."""
        if self.is_format_sweep and isinstance(key, int) and not isinstance(key, bool):
            return f"int{key}"
        if isinstance(key, str) and not self.is_format_sweep:
            try:
                return int(key.lower().removeprefix("int"))
            except ValueError:
                return key
        if isinstance(key, str):
            from quantlens.quant.formats import get_format

            return get_format(key).name
        return key

    @property
    def layer_names(self) -> list[str]:
        return [l.name for l in self.layers]

    @cached_property
    def _by_key(self) -> dict[tuple[str, int], Cell]:
        return {(c.layer, self.key_of(c)): c for c in self.cells}

    def find(self, layer: str, bits: "int | str") -> Optional[Cell]:
        """The cell of ``layer`` at ``bits`` (a bit-width or a format name), or None."""
        try:
            key = self.column(bits)
        except QuantlensError:
            return None
        return self._by_key.get((layer, key))

    def cell(self, layer: str, bits: "int | str") -> Cell:
        c = self.find(layer, bits)
        if c is None:
            raise QuantlensError(f"no cell for layer {layer!r} at {column_label(bits)}")
        return c

    def at(self, bits: "int | str") -> list[Cell]:
        """Cells at one bit-width (or format), layers in topological order."""
        key = self.column(bits)
        if key not in self.w_bits:
            raise QuantlensError(f"no results at {column_label(bits)}; the sweep has {', '.join(map(column_label, self.w_bits))}")
        order = {n: i for i, n in enumerate(self.layer_names)}
        return sorted((c for c in self.cells if self.key_of(c) == key), key=lambda c: order[c.layer])

    def worst(self, bits: int, k: int = 5) -> list[Cell]:
        """The ``k`` layers with the largest degradation at ``bits`` (ties: lower SQNR first)."""
        cells = self.at(bits)
        return sorted(cells, key=lambda c: (-_nan_low(c.degradation), _nan_high(c.sqnr_db)))[:k]

    def share(self, bits: int) -> dict[str, float]:
        """Each layer's share of the summed positive degradation at ``bits``."""
        return shares({c.layer: c.degradation for c in self.at(bits)})

    def summed_degradation(self, bits: int) -> float:
        """``sum_l max(0, d_l)`` at ``bits`` (the rule for NaN/Inf cells: :mod:`quantlens.stats.degradation`)."""
        return summed_degradation(c.degradation for c in self.at(bits))

    def table(self, value: str = "degradation") -> tuple[list[str], list, list[list[float]]]:
        """``(layer names, bits, matrix[layer][bits])`` of one cell field."""
        bits = self.w_bits
        nan = float("nan")
        return self.layer_names, bits, [[getattr(self._by_key[(n, b)], value) if (n, b) in self._by_key else nan for b in bits]
                                        for n in self.layer_names]

    # ---- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        return jsonio.clean(
            {
                "schema": SCHEMA,
                "model": self.model,
                "metric": {"name": self.metric_name, "higher_is_better": self.higher_is_better},
                "baseline": self.baseline,
                "num_samples": self.num_samples,
                "engine": self.engine,
                "elapsed_s": self.elapsed_s,
                "config": self.config,
                "layers": [l.to_dict() for l in self.layers],
                "cells": [asdict(c) for c in self.cells],
                "extra": self.extra,
            }
        )

    def to_json(self, path: Union[str, os.PathLike, None] = None) -> str:
        """The JSON text; also written (atomically) to ``path`` if given."""
        return jsonio.dump(self.to_dict(), path)

    @classmethod
    def from_dict(cls, d: dict) -> "SweepResult":
        if d.get("schema") != SCHEMA:
            raise QuantlensError(f"not a quantlens sweep result (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        try:
            return cls._from_fields(d)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise QuantlensError(
                f"the sweep result is incomplete or damaged ({type(e).__name__}: {e}); rerun `quantlens analyze` to rewrite it"
            ) from None

    @classmethod
    def _from_fields(cls, d: dict) -> "SweepResult":
        return cls(
            metric_name=d["metric"]["name"],
            higher_is_better=bool(d["metric"]["higher_is_better"]),
            baseline=_num(d["baseline"]),
            num_samples=int(d["num_samples"]),
            layers=tuple(LayerInfo.from_dict(l) for l in d["layers"]),
            cells=tuple(Cell.from_dict(c) for c in d["cells"]),
            config=d.get("config", {}),
            model=d.get("model", ""),
            engine=d.get("engine", "cone"),
            elapsed_s=_num(d.get("elapsed_s")),
            extra=d.get("extra", {}),
        )

    @classmethod
    def from_json(cls, source: Union[str, os.PathLike]) -> "SweepResult":
        """Load from a path to ``results.json`` (or its directory), or from JSON text."""
        d = jsonio.load(source, SCHEMA, "sweep result", "results.json", hint="run `quantlens analyze ... --out DIR` first")
        try:
            return cls.from_dict(d)
        except QuantlensError as e:
            if str(source).lstrip().startswith("{"):
                raise
            raise QuantlensError(f"{source}: {e}") from None

    def to_dataframe(self) -> Any:
        """A pandas DataFrame, one row per cell, with the layer's index, op and params."""
        import pandas as pd

        info = {l.name: l for l in self.layers}
        rows = []
        for c in self.cells:
            l = info[c.layer]
            rows.append({"index": l.index, "op": l.op, "kind": l.kind, "params": l.params, **asdict(c)})
        df = pd.DataFrame(rows)
        return df.sort_values(["w_bits", "index"]).reset_index(drop=True)

    def to_csv(self, path: Union[str, os.PathLike]) -> None:
        """Write the cells as CSV, atomically (see :func:`quantlens.core.jsonio.write_atomic`)."""
        jsonio.write_atomic(path, self.to_dataframe().to_csv(index=False))


def column_label(key: "int | str") -> str:
    """How a column is named to a user: ``4b`` for a bit-width, the format's name otherwise."""
    return f"{key}b" if isinstance(key, int) and not isinstance(key, bool) else str(key)


def weights_label(key: "int | str") -> str:
    """A column as an adjective of weights: ``4-bit`` for a bit-width, the format's name otherwise."""
    return f"{key}-bit" if isinstance(key, int) and not isinstance(key, bool) else str(key)


def bits_label(key: "int | str") -> str:
    """A column in a sentence: ``4 bits`` for a bit-width, the format's name otherwise."""
    return f"{key} bits" if isinstance(key, int) and not isinstance(key, bool) else str(key)


def _nan_low(x: float) -> float:
    return float("-inf") if math.isnan(x) else x


def _nan_high(x: float) -> float:
    return float("inf") if math.isnan(x) else x
