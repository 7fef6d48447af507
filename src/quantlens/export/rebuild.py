"""The simulated network of a saved configuration, rebuilt exactly as ``fix`` / ``plan`` measured it.

A directory written by ``quantlens fix`` (or ``plan``) holds ``quant_config.json`` (bits,
granularity, fixes, and under ``ranges`` each layer's activation scale and zero point) and
``weights.safetensors`` (each layer's fixed float weights, BatchNorm folded). From them and
the float model, :func:`load_quantized` rebuilds the :class:`QuantizedNetwork` without any data:

* weights: the saved fixed float weights, quantized again with the layer's spec (the result
  is checked against the saved ``weight_quantized``, so a config and weights that do not
  belong together are refused);
* activations: the saved scale and zero point, exactly.

Without saved weights the config's fixes are applied anew (on ``calib``); without saved
ranges the activations are calibrated on ``calib``.

:func:`effective_config` gives the config an exporter can hold: ``keep_float`` layers and
16-bit (or wider) weights/activations become float, the "float fallback".

Example:
    >>> qnet, cfg = load_quantized(model, "run/quant_config.json")      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import nn

from quantlens.network.measure import UntraceableError, capture_traceable
from quantlens.engine.build import QuantizedNetwork, build_quantized, calibrate_ranges
from quantlens.errors import QuantlensError
from quantlens.graph.layers import LayerGraph
from quantlens.core.guard import preserve_model
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.quant.observers import MinMaxObserver

__all__ = ["load_quantized", "effective_config", "read_config", "FLOAT_BITS"]

FLOAT_BITS = 16  # a layer at this many bits or more is exported in float (the "float fallback")


def read_config(source: Union[str, os.PathLike, QuantConfig]) -> tuple[QuantConfig, dict, Optional[Path]]:
    """``(config, saved ranges, directory)`` from a ``quant_config.json`` path, its directory, or a config."""
    if isinstance(source, QuantConfig):
        return source, {}, None
    p = Path(source)
    if p.is_dir():
        p = p / "quant_config.json"
    config = QuantConfig.from_json(p)
    raw = json.loads(p.read_text(encoding="utf-8"))
    ranges = raw.get("ranges") if isinstance(raw.get("ranges"), dict) else {}
    return config, ranges, p.parent


def effective_config(config: QuantConfig, keep_float: Iterable[str] = ()) -> QuantConfig:
    """``config`` with ``keep_float`` layers removed and >= 16-bit integer weights/activations made float
    (a named format, ``bf16`` included, stays: its rounded values are what the simulation computed)."""
    keep = [k for k in keep_float if k]
    unknown = [k for k in keep if config.get(k) is None]
    if unknown:
        raise QuantlensError(f"--keep-float names layer(s) the config does not quantize: {', '.join(unknown)}; "
                             f"configured layers are: {', '.join(config.names)}")
    layers = []
    for name, lq in config.layers:
        if name in keep:
            continue
        weight = lq.weight if lq.weight is not None and (lq.weight.format is not None or lq.weight.bits < FLOAT_BITS) else None
        act = lq.act if lq.act is not None and (lq.act.format is not None or lq.act.bits < FLOAT_BITS) else None
        if weight is None and act is None:
            continue
        layers.append((name, LayerQuant(weight=weight, act=act, fixes=lq.fixes)))
    return replace(config, layers=tuple(layers))


def _load_weights(graph: LayerGraph, config: QuantConfig, path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        saved = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise QuantlensError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
    for layer in graph.layers:
        key = f"{layer.name}.weight"
        if key not in saved:
            if config.get(layer.name) is not None:
                raise QuantlensError(f"{path} has no weights for layer {layer.name}: the weights and the model do not belong together")
            continue
        m = graph.module(layer)
        if tuple(saved[key].shape) != tuple(m.weight.shape):
            raise QuantlensError(f"{path}: layer {layer.name} has weights of shape {tuple(saved[key].shape)}, "
                                 f"the model {tuple(m.weight.shape)}: the weights and the model do not belong together")
        with torch.no_grad():
            m.weight.copy_(saved[key])
            bkey = f"{layer.name}.bias"
            if bkey in saved:
                if m.bias is None:
                    m.bias = nn.Parameter(saved[bkey].clone(), requires_grad=False)  # bias correction adds one
                else:
                    m.bias.copy_(saved[bkey])
    return saved


def _stored_observers(config: QuantConfig, ranges: dict) -> Optional[tuple[dict, dict]]:
    """Placeholder observers for every activation-quantized layer, or None if a range is missing."""
    ins: dict[str, MinMaxObserver] = {}
    outs: dict[str, MinMaxObserver] = {}
    for name, lq in config.layers:
        if lq.a_bits is None:
            continue
        r = ranges.get(name, {})
        if not all(k in r for k in ("in_scale", "in_zero_point", "out_scale", "out_zero_point")):
            return None
        ins[name], outs[name] = MinMaxObserver(-1.0, 1.0, 1), MinMaxObserver(-1.0, 1.0, 1)
    return ins, outs


def load_quantized(
    model: nn.Module,
    config: Union[str, os.PathLike, QuantConfig],
    *,
    calib: Optional[Iterable[Any]] = None,
    keep_float: Sequence[str] = (),
    device: Union[str, torch.device] = "cpu",
    graph: Optional[LayerGraph] = None,
    data: Optional[Iterable[Any]] = None,
) -> tuple[QuantizedNetwork, QuantConfig]:
    """The simulated network of ``config`` (see module docstring) and the effective config.

    ``data`` (or ``calib``): a first batch for a capture through torch.export, when torch.fx cannot trace the model.
    """
    base, ranges, directory = read_config(config)
    with preserve_model(model):
        try:
            g = graph if graph is not None else capture_traceable(model, data if data is not None else calib)
        except UntraceableError as e:
            raise QuantlensError(f"export and verify need a model torch.fx can trace ({e.reason})") from None
    base.check_layers(l.name for l in g.layers)
    eff = effective_config(base, keep_float)
    wpath = directory / "weights.safetensors" if directory is not None else None
    saved: Optional[dict] = None
    if wpath is not None and wpath.is_file():
        from quantlens.fixes.base import restore_fixes

        saved = _load_weights(g, eff, wpath)
        g = restore_fixes(g, eff)  # online input ops re-inserted, weights a fix quantized used as they are
    elif eff.fix_layers():
        if calib is None:
            raise QuantlensError("the config has fixes but no weights.safetensors beside it: give --calib MOD:FN to apply the fixes")
        from quantlens.fixes import apply_fixes

        g = apply_fixes(g, eff, calib, torch.device(device))
    stored = _stored_observers(eff, ranges) if ranges else None
    if stored is None:
        if calib is None and any(lq.a_bits is not None for _, lq in eff.layers):
            raise QuantlensError("the config has no activation ranges (quant_config.json 'ranges'): give --calib MOD:FN to calibrate them")
        stored = calibrate_ranges(g, eff, calib or [], torch.device(device)) if calib is not None else ({}, {})
        qnet = build_quantized(g, eff, calib or [], device, observers=stored)
    else:
        build_cfg = replace(eff, act_estimator="minmax")  # placeholders; the saved parameters follow
        qnet = build_quantized(g, build_cfg, [], device, observers=stored)
        qnet.config = eff
        for key, qs in (("in", qnet.in_q), ("out", qnet.out_q)):
            for name, q in qs.items():
                q.scale = torch.tensor(float(ranges[name][f"{key}_scale"]), dtype=torch.float32, device=q.scale.device)
                q.zero_point = torch.tensor(int(ranges[name][f"{key}_zero_point"]), dtype=torch.int32, device=q.zero_point.device)
    if saved is not None:
        for name, qw in qnet.weights.items():
            ref = saved.get(f"{name}.weight_quantized")
            lq = base.get(name)
            if ref is not None and lq is not None and lq.w_bits == eff.layer(name).w_bits and not torch.equal(ref.to(qw.weight), qw.weight):
                raise QuantlensError(f"weights.safetensors does not match quant_config.json for layer {name}: "
                                     "write both with the same `quantlens fix` / `plan` run")
    return qnet, eff
