"""Export a quantized network: ``quant_config.json`` and ``weights.safetensors``.

* ``quant_config.json``: the :class:`~quantlens.core.layer_config.QuantConfig` (schema
  ``quantlens/quant-config-v1``: per-layer bits, granularity, estimator, fixes) plus
  ``ranges`` (per layer: weight clip and scales, input/output activation scale, zero point
  and range) and any extra fields given.
* ``weights.safetensors``: per layer ``<name>.weight`` and ``<name>.bias`` (the fixed float
  weights, BatchNorm folded), ``<name>.weight_quantized`` (the fake-quantized weight the
  measurements used) and ``<name>.weight_scale``.

Example:
    >>> qnet = NetworkMeasurer(Workload(model, data)).build(cfg)     # doctest: +SKIP
    >>> export(qnet, "out/")                               # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch

from quantlens.engine.build import QuantizedNetwork
from quantlens.core.jsonio import write_error

__all__ = ["export", "weight_tensors"]


def weight_tensors(qnet: QuantizedNetwork) -> dict[str, torch.Tensor]:
    """The tensors written to ``weights.safetensors`` (contiguous CPU copies)."""
    out: dict[str, torch.Tensor] = {}
    for layer in qnet.graph.layers:
        m = qnet.graph.module(layer)
        out[f"{layer.name}.weight"] = m.weight.detach()
        if m.bias is not None:
            out[f"{layer.name}.bias"] = m.bias.detach()
        qw = qnet.weights.get(layer.name)
        if qw is not None:
            out[f"{layer.name}.weight_quantized"] = qw.weight
            out[f"{layer.name}.weight_scale"] = qw.scale.reshape(-1)
    return {k: v.float().cpu().contiguous().clone() for k, v in out.items()}


def export(qnet: QuantizedNetwork, out_dir: Union[str, Path], extra: Optional[dict] = None) -> tuple[Path, Path]:
    """Write ``quant_config.json`` and ``weights.safetensors`` into ``out_dir``; returns both paths."""
    from safetensors.torch import save_file

    d = Path(out_dir)
    cfg_path, w_path = d / "quant_config.json", d / "weights.safetensors"
    qnet.config.to_json(cfg_path, extra={"ranges": qnet.ranges(), **(extra or {})})
    tmp = w_path.with_name(f".{w_path.name}.{os.getpid()}.tmp")
    try:  # atomically, like every file quantlens writes: the old file or the new one, whole
        save_file(weight_tensors(qnet), str(tmp), metadata={"format": "pt", "producer": "quantlens"})
        os.replace(tmp, w_path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(w_path, e) from None
    return cfg_path, w_path
