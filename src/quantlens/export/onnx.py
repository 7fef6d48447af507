"""``model.onnx``: the simulated network as a QDQ ONNX model that onnxruntime runs.

QuantizeLinear/DequantizeLinear sit exactly where the simulation quantizes (see
:mod:`quantlens.export.qdq`); torch's ONNX exporter (``torch.onnx.export(dynamo=True)``,
opset 21) writes the graph, then each weight's DequantizeLinear gets its real scale:

* per-tensor: a scalar scale; per-channel: ``axis=0``; per-group: ``axis=1`` and
  ``block_size=g`` (opset 21 blocked quantization), the scale repeated over the kernel;
* weights at 4 bits or fewer are stored as INT4 (``int4=False``: int8), others as int8, in
  both cases the integers of the b-bit grid with the b-bit scale: ``W_q = q * s`` exactly;
* FP8 weights (``fp8-e4m3`` / ``fp8-e5m2``, per tensor or ``-channel``) are stored as
  FLOAT8E4M3FN / FLOAT8E5M2 codes with their float32 scale, ``W_q = q * s`` exactly; FP8
  activations as QuantizeLinear (``saturate=1``) / DequantizeLinear to the same types;
* the zero point input of weight DequantizeLinear is left out (symmetric: 0).

Beside ``model.onnx``, ``export.json`` (schema ``quantlens/export-v1``) records the model
spec, the effective config and each layer's storage, for ``quantlens verify``.

Example:
    >>> import quantlens as ql
    >>> ql.export_onnx(model, "run/quant_config.json", "run/onnx")     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from quantlens.core import jsonio
from quantlens.data.batches import iterate
from quantlens.engine.build import QuantizedNetwork
from quantlens.errors import QuantlensError
from quantlens.core.layer_config import QuantConfig
from quantlens.export.qdq import FP8_STORAGE, LayerFormat, QDQNetwork, layer_formats, onnx_scale, qdq_module, weight_integers
from quantlens.export.rebuild import load_quantized

__all__ = ["OnnxExport", "export_onnx", "export_qnet", "EXPORT_SCHEMA", "OPSET", "check_onnx_available"]

EXPORT_SCHEMA = "quantlens/export-v1"
OPSET = 21


def check_onnx_available() -> None:
    """One line if ``onnx`` / ``onnxruntime`` are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise QuantlensError(f"ONNX export and verify need onnx and onnxruntime ({e.name} is missing): pip install 'quantlens[onnx]'") from None


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: Path
    info_path: Path
    config: QuantConfig
    layers: dict[str, LayerFormat]
    inputs: tuple[str, ...]
    dynamic_batch: bool
    opset: int = OPSET
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "schema": EXPORT_SCHEMA,
            "format": "onnx-qdq",
            "onnx": self.path.name,
            "opset": self.opset,
            "inputs": list(self.inputs),
            "dynamic_batch": self.dynamic_batch,
            "config": self.config.to_dict(),
            "layers": {n: f.to_dict() for n, f in self.layers.items()},
            **self.extra,
        }


@lru_cache(maxsize=None)
def _runtime_supports(kind: str) -> bool:
    """Whether this onnxruntime runs a DequantizeLinear of ``kind`` (``int4``, ``block``, ``float8e4m3fn``, ``float8e5m2``) on CPU."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[1, -2, 3, -4], [0, 1, -1, 2]], dtype=np.int8)
    attrs: dict = {"axis": 1, "block_size": 2} if kind == "block" else {}
    scale = np.full((2, 2), 0.5, np.float32) if kind == "block" else np.array(0.5, np.float32)
    node = helper.make_node("DequantizeLinear", ["w", "s"], ["y"], **attrs)
    if kind in FP8_STORAGE.values():
        init = _code_tensor("w", torch.from_numpy(w.astype(np.float32)), kind, False)
    else:
        init = helper.make_tensor("w", TensorProto.INT4 if kind == "int4" else TensorProto.INT8, w.shape, w.flatten().tolist())
    g = helper.make_graph([node], "probe", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [init, numpy_helper.from_array(scale, "s")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    try:
        y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {})[0]
    except Exception:
        return False
    _ = onnx  # imported for the helper API
    return bool(np.allclose(y, w * 0.5))


def _check_runtime(formats: dict[str, LayerFormat], int4: bool) -> bool:
    """Refuse per-group where onnxruntime lacks blocked DequantizeLinear; whether INT4 storage is usable."""
    for f in formats.values():
        for storage in (f.storage, FP8_STORAGE.get(str(f.a_format or "").removeprefix("fp8-"))):
            if storage in FP8_STORAGE.values() and not _runtime_supports(storage):
                raise QuantlensError(f"layer {f.layer}: this onnxruntime does not run {storage} DequantizeLinear on the CPU; "
                                     "use an int format for this layer, or a newer onnxruntime")
        if f.block_size is not None and not _runtime_supports("block"):
            raise QuantlensError(f"layer {f.layer}: per-group weights need DequantizeLinear block_size (opset 21), which this "
                                 "onnxruntime does not run; use per-channel granularity or a newer onnxruntime")
    return int4 and _runtime_supports("int4")


def _sample(qnet: QuantizedNetwork, data: Iterable[Any]) -> tuple[Tensor, ...]:
    """The graph's placeholder values for the first batch of ``data`` (batch of at least 2)."""
    for inputs, _ in iterate(data, "data"):
        flat = qnet.graph.flat(inputs)
        bad = [type(v).__name__ for v in flat if not isinstance(v, Tensor)]
        if bad:
            raise QuantlensError(f"onnx-qdq export takes tensor inputs only; the model's inputs include {', '.join(bad)}")
        flat = tuple(t.detach().cpu() for t in flat)
        if flat[0].shape[0] < 2:  # a batch of 1 would let the exporter fix the batch size
            flat = tuple(torch.cat([t, t]) for t in flat)
        return flat
    raise QuantlensError("data is empty")  # pragma: no cover - iterate raises first


def _torch_export(module: QDQNetwork, sample: tuple[Tensor, ...], names: list[str], path: Path) -> bool:
    """``torch.onnx.export`` with a dynamic batch (static if the model fixes it); returns whether dynamic."""
    module.set_exporting(True)
    quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        for dynamic in (True, False):
            batch = torch.export.Dim("batch", min=1)
            shapes = (tuple({0: batch} for _ in sample),) if dynamic else None  # forward(*inputs): one varargs entry
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    torch.onnx.export(module, sample, str(path), dynamo=True, opset_version=OPSET, input_names=names,
                                      output_names=["output"], dynamic_shapes=shapes, external_data=False, verbose=False)
                return dynamic
            except Exception as e:
                if not dynamic:
                    first = (str(e).strip().splitlines() or [""])[0][:200]
                    raise QuantlensError(f"torch's ONNX exporter failed on this model ({type(e).__name__}: {first})") from None
    finally:
        module.set_exporting(False)
        quiet.setLevel(level)
    return False  # pragma: no cover


def _place_weights(path: Path, qnet: QuantizedNetwork, formats: dict[str, LayerFormat], int4: bool) -> None:
    """Give each weight DequantizeLinear its integers, scale, axis and block size (module docstring)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    for f in formats.values():
        if f.storage is None:
            continue
        suffix = f"ql_layer_{f.index}.wint"
        names = [n for n in inits if n == suffix or n.endswith("." + suffix)]
        if len(names) != 1 or len(consumers.get(names[0], [])) != 1 or consumers[names[0]][0].op_type != "DequantizeLinear":
            raise QuantlensError(f"layer {f.layer}: could not find its weight in the exported ONNX graph")  # pragma: no cover
        name, dq = names[0], consumers[names[0]][0]
        q, _ = weight_integers(qnet, f.layer)
        g.initializer.remove(inits[name])
        g.initializer.append(_code_tensor(name, q, f.storage, int4))
        scale_name = f"{name}_scale"
        g.initializer.append(numpy_helper.from_array(onnx_scale(qnet, f).numpy().astype("float32"), scale_name))
        del dq.input[:]
        dq.input.extend([name, scale_name])
        del dq.attribute[:]
        if f.axis is not None:
            dq.attribute.append(helper.make_attribute("axis", f.axis))
        if f.block_size is not None:
            dq.attribute.append(helper.make_attribute("block_size", f.block_size))
    used = {i for n in g.node for i in n.input}
    for t in list(g.initializer):
        if t.name not in used and t.name not in {o.name for o in g.output}:
            g.initializer.remove(t)  # the placeholder scales and zero points
    onnx.save(model, str(path))


def _code_tensor(name: str, q: Tensor, storage: str, int4: bool) -> Any:
    """The initializer of a weight's codes: INT4 / INT8 integers, or FP8 codes as their raw bytes."""
    from onnx import TensorProto, helper

    if storage in FP8_STORAGE.values():
        dtype, tdtype = ((TensorProto.FLOAT8E4M3FN, torch.float8_e4m3fn) if storage == "float8e4m3fn"
                         else (TensorProto.FLOAT8E5M2, torch.float8_e5m2))
        codes = q.float().to(tdtype)
        if not torch.equal(codes.float(), q.float()):  # the codes are on the element's grid, so the cast is exact
            raise AssertionError(f"{name}: the FP8 codes are not on the {storage} grid")
        return helper.make_tensor(name, dtype, list(q.shape), codes.view(torch.uint8).numpy().tobytes(), raw=True)
    dtype = TensorProto.INT4 if (storage == "int4" and int4) else TensorProto.INT8
    return helper.make_tensor(name, dtype, list(q.shape), q.flatten().tolist())


def export_qnet(
    qnet: QuantizedNetwork,
    out_dir: Union[str, os.PathLike],
    sample: tuple[Tensor, ...],
    *,
    output_key: Union[str, int, None] = None,
    int4: bool = True,
    extra: Optional[dict] = None,
) -> OnnxExport:
    """Write ``out_dir/model.onnx`` and ``export.json`` for the simulated network ``qnet``.

    ``sample``: the graph's placeholder values for one batch (``qnet.graph.flat(inputs)``).
    """
    check_onnx_available()
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise QuantlensError(f"--out {d}: exists and is not a directory; choose another path")
    d.mkdir(parents=True, exist_ok=True)
    formats = layer_formats(qnet, int4)
    use_int4 = _check_runtime(formats, int4)
    module = qdq_module(qnet, formats, output_key)
    names = [n.name for n in qnet.graph.gm.graph.nodes if n.op == "placeholder"]
    if len(names) != len(sample):
        raise QuantlensError(f"the model takes {len(names)} input(s) ({', '.join(names)}); the sample gives {len(sample)}")
    path = d / "model.onnx"
    dynamic = _torch_export(module, sample, names, path)
    _place_weights(path, qnet, formats, use_int4)
    if not use_int4:
        formats = {n: (f if f.storage != "int4" else LayerFormat(**{**f.__dict__, "storage": "int8"})) for n, f in formats.items()}
    try:
        import onnxruntime as ort

        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # pragma: no cover - a bug in the export, not the user's input
        raise QuantlensError(f"onnxruntime cannot load the exported model: {str(e).splitlines()[0][:200]}") from None
    res = OnnxExport(path, d / "export.json", qnet.config, formats, tuple(names), dynamic, extra=dict(extra or {}))
    jsonio.dump({**res.to_dict(), "output_key": output_key}, res.info_path)
    return res


def export_onnx(
    model: nn.Module,
    config: Union[str, os.PathLike, QuantConfig],
    out_dir: Union[str, os.PathLike],
    *,
    data: Optional[Iterable[Any]] = None,
    calib: Optional[Iterable[Any]] = None,
    keep_float: Sequence[str] = (),
    output_key: Union[str, int, None] = None,
    int4: bool = True,
    model_name: str = "",
) -> OnnxExport:
    """Export ``model`` quantized by ``config`` (a ``quant_config.json``, its directory, or a
    :class:`QuantConfig`) to ``out_dir/model.onnx``.

    The simulated network is rebuilt from the saved fixed weights and activation ranges
    (:func:`quantlens.export.rebuild.load_quantized`); ``calib`` is needed only when they are
    missing. ``data`` (or ``calib``) gives one sample batch for the exporter.
    ``keep_float`` layers (and 16-bit ones) stay float.
    """
    check_onnx_available()
    d = Path(out_dir)
    if d.exists() and not d.is_dir():
        raise QuantlensError(f"--out {d}: exists and is not a directory; choose another path")
    sample_src = data if data is not None else calib
    if sample_src is None:
        raise QuantlensError("the exporter needs one batch of inputs: give data (--data MOD:FN)")
    qnet, eff = load_quantized(model, config, calib=calib, keep_float=keep_float, data=sample_src)
    src = None if isinstance(config, QuantConfig) else str(Path(config).resolve())
    return export_qnet(qnet, d, _sample(qnet, sample_src), output_key=output_key, int4=int4,
                       extra={"model": model_name, "source_config": src, "keep_float": list(keep_float)})
