"""Models from files: ``.onnx`` (converted to a torch.fx graph by onnx2torch), ``.pt2``
(an ``ExportedProgram`` saved with ``torch.export.save``) and ``.gguf`` (a llama.cpp file).

* ONNX: the graph is converted with onnx2torch (``pip install 'quantlens[onnx]' onnx2torch``);
  layer names are the ONNX node names (``/conv1/Conv`` becomes ``conv1/Conv``). Already
  quantized graphs (QuantizeLinear / DequantizeLinear / QLinear* / *Integer nodes) are refused.
  :func:`check_onnx` runs the file in onnxruntime on a batch and refuses the conversion when
  an output differs by more than ``rtol * max|y|``.
* ``.pt2``: the program's module (``ExportedProgram.module()``); quantlens captures it with
  torch.export again, so layer names come from the program's parameter names.
* ``.gguf``: a causal LM of an architecture transformers' GGUF loader knows (Llama, Mistral,
  Qwen2, ...), every tensor dequantized to float32 (``AutoModelForCausalLM.from_pretrained(folder,
  gguf_file=name, use_cache=False)``; needs ``transformers``, ``accelerate`` and ``gguf``). Its
  weights are the file's quantized values: the sweep's summary says which grid they sit on.
  Batches are the tokenizer's dicts (``AutoTokenizer.from_pretrained(folder, gguf_file=name)``).

Example:
    >>> model = load_model_file("model.onnx")                      # doctest: +SKIP
    >>> check_onnx("model.onnx", model, first_batch_inputs)        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
import types
import warnings
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor, nn

from quantlens.errors import QuantlensError
from quantlens.core.inputs import Inputs

__all__ = ["MODEL_SUFFIXES", "load_model_file", "load_onnx", "load_pt2", "load_gguf", "check_onnx", "QUANTIZED_ONNX_OPS"]

MODEL_SUFFIXES = (".onnx", ".pt2", ".gguf")
QUANTIZED_ONNX_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd",
     "QLinearMul", "QGemm", "ConvInteger", "MatMulInteger", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat"}
)


def load_model_file(path: Union[str, Path]) -> nn.Module:
    """The model in ``path`` (``.onnx`` or ``.pt2``), in eval mode."""
    p = Path(path)
    if not p.is_file():
        raise QuantlensError(f"{path}: no such file")
    if p.suffix == ".onnx":
        return load_onnx(p)
    if p.suffix == ".pt2":
        return load_pt2(p)
    if p.suffix == ".gguf":
        return load_gguf(p)
    raise QuantlensError(f"{path}: unknown model file type; give a .onnx, .pt2 or .gguf file, or MOD:FN")


@contextlib.contextmanager
def _memoized_name_map() -> Any:
    """Memoize ``gguf.get_tensor_name_map`` while transformers loads a file: its GGUF loader rebuilds
    the same read-only map once per submodule (about 400 times for a 30-block Llama, a third of the load)."""
    import gguf

    original = getattr(gguf, "get_tensor_name_map", None)
    if original is None:
        yield
        return
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def load_gguf(path: Union[str, Path]) -> nn.Module:
    """The causal LM in the GGUF file ``path`` as a float32 transformers model (``use_cache=False``, eval mode)."""
    p = Path(path)
    for mod, pip in (("gguf", "pip install gguf"), ("transformers", "pip install 'quantlens[lm]'"),
                     ("accelerate", "pip install accelerate")):
        if importlib.util.find_spec(mod) is None:
            raise QuantlensError(f"{p.name}: a GGUF model needs {mod} ({pip}); or load it yourself with "
                                 f"transformers' AutoModelForCausalLM.from_pretrained(folder, gguf_file=name) behind --model MOD:FN")
    from quantlens.core.quiet import preload_torchao

    preload_torchao()
    import transformers as tf

    kwargs: dict[str, Any] = {"gguf_file": p.name, "dtype": torch.float32}
    if hasattr(tf, "GgufConfig"):  # unpack every weight: plain nn.Linear, no packed GGUF kernels
        kwargs["quantization_config"] = tf.GgufConfig(dequantize=True)
    with warnings.catch_warnings(), _memoized_name_map():
        warnings.simplefilter("ignore")
        try:
            net = tf.AutoModelForCausalLM.from_pretrained(str(p.parent), use_cache=False, **kwargs)
        except TypeError:  # a transformers that refuses the config kwarg
            net = tf.AutoModelForCausalLM.from_pretrained(str(p.parent), **kwargs)
        except (ValueError, KeyError, RuntimeError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise QuantlensError(f"{p.name}: transformers cannot load this GGUF file ({type(e).__name__}: {first}); its "
                                 "GGUF loader knows Llama, Mistral, Qwen2, Gemma and a few more architectures") from None
    quantizer = getattr(net, "hf_quantizer", None)
    if quantizer is not None:  # the weights are dense float32 now: no "quantized model" flag left
        quantizer.remove_quantization_config(net)
    net.config.use_cache = False
    return net.eval()


def _onnx2torch() -> Any:
    """Import onnx2torch; where torchvision is absent (it only serves NMS and RoIAlign), with a
    stand-in that says so if such a node is ever run."""
    try:
        import onnx2torch

        return onnx2torch
    except ModuleNotFoundError as e:
        if e.name != "torchvision":
            raise QuantlensError("ONNX models need onnx and onnx2torch: pip install 'quantlens[onnx]' onnx2torch") from None
    tv, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise QuantlensError("this ONNX graph uses NonMaxSuppression or RoiAlign, which need torchvision installed")

    ops.nms = ops.roi_align = ops.box_convert = missing  # type: ignore[attr-defined]
    tv.ops = ops  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("torchvision", "torchvision.ops")}
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops})
    try:
        import onnx2torch

        return onnx2torch
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def load_onnx(path: Union[str, Path]) -> nn.Module:
    """Convert the ONNX graph in ``path`` to a torch.fx ``GraphModule`` (see module docstring)."""
    try:
        import onnx
    except ImportError:
        raise QuantlensError("ONNX models need onnx and onnx2torch: pip install 'quantlens[onnx]' onnx2torch") from None
    try:
        proto = onnx.load(str(path))
    except Exception as e:
        raise QuantlensError(f"{path}: not a loadable ONNX file ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    quantized = sorted({n.op_type for n in proto.graph.node} & QUANTIZED_ONNX_OPS)
    if quantized:
        raise QuantlensError(
            f"{path} is already quantized ({', '.join(quantized)} nodes): give quantlens the float model it came from"
        )
    converter = _onnx2torch()
    try:
        model = converter.convert(proto)
    except Exception as e:
        raise QuantlensError(f"{path}: onnx2torch cannot convert it ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    return model.eval()


def load_pt2(path: Union[str, Path]) -> nn.Module:
    """The module of the ``ExportedProgram`` saved in ``path``."""
    from quantlens.core.quiet import quiet

    try:
        with quiet():
            ep = torch.export.load(str(path))
    except Exception as e:
        raise QuantlensError(
            f"{path} is not a torch.export program ({type(e).__name__}); save one with torch.export.save(torch.export.export(model, args), path)"
        ) from None
    if not isinstance(ep, torch.export.ExportedProgram):
        raise QuantlensError(f"{path} is not a torch.export program; save one with torch.export.save")
    with quiet():
        return ep.module()


def _outputs(out: Any) -> list[Tensor]:
    from torch.utils import _pytree as pytree

    return [t for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]


def check_onnx(path: Union[str, Path], model: nn.Module, inputs: Inputs, rtol: float = 1e-4) -> float:
    """Run ``path`` in onnxruntime and the converted ``model`` on ``inputs``; the largest output
    difference relative to ``max|y|``. Refuses (one line) a conversion that differs by more than ``rtol``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise QuantlensError("checking an ONNX model needs onnxruntime: pip install 'quantlens[onnx]'") from None
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise QuantlensError(f"onnxruntime cannot load {path} ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    names = [i.name for i in sess.get_inputs()]
    given = list(inputs.args) + [inputs.kwargs[k] for k in names[len(inputs.args):] if k in inputs.kwargs]
    if len(given) != len(names):
        raise QuantlensError(f"{path} takes inputs {', '.join(names)}; the batch gives {len(given)} of them")
    feed = {n: t.detach().cpu().numpy() for n, t in zip(names, given)}
    try:
        ref = sess.run(None, feed)
    except Exception as e:
        raise QuantlensError(f"onnxruntime cannot run {path} on the first batch ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None
    with torch.no_grad():
        mine = _outputs(inputs.call(model))
    worst = 0.0
    for o, r, t in zip(sess.get_outputs(), ref, mine):
        r = torch.as_tensor(r)
        if tuple(r.shape) != tuple(t.shape):
            raise QuantlensError(f"the converted model's output {o.name!r} has shape {tuple(t.shape)}, onnxruntime's {tuple(r.shape)}")
        scale = float(r.abs().max()) if r.numel() else 0.0
        diff = float((t.detach().cpu().to(r.dtype) - r).abs().max()) / max(scale, 1e-12) if r.numel() else 0.0
        worst = max(worst, diff)
        if diff > rtol:
            raise QuantlensError(
                f"the converted model's output {o.name!r} differs from onnxruntime's by {diff:.1e} of its largest value "
                f"(limit {rtol:.0e}): onnx2torch does not reproduce this file, so quantlens cannot analyse it faithfully"
            )
    return worst
