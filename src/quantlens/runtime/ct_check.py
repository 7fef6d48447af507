"""``quantlens verify --checkpoint``: a compressed-tensors checkpoint in transformers against the simulation.

Over the same data, four networks run: the float model (``H_f``), quantlens's simulation of the
exported config (``H_s``, the whole-network quantized graph), the checkpoint loaded by
``AutoModelForCausalLM.from_pretrained`` with compressed-tensors (the runtime, ``H_r``), and the
float model with the simulated weights put in its Linear layers ("plain", ``H_p``). With the
sign rule (positive is worse)::

    predicted = H_f - H_s      runtime = H_f - H_r      difference = runtime - predicted

The intervals are the metric's own paired ones (:mod:`quantlens.stats.intervals`; for
perplexity the delta-method interval of a ratio estimator with each sequence a unit): the
difference's from the runtime scored against the simulation, the simulated metric's from the
simulation scored against the float model. A difference whose interval excludes 0 is flagged.
Logits are compared token by token: token agreement (the share of positions with the same
arg-max), SQNR ``10 log10(sum y_s^2 / sum (y_r - y_s)^2)`` and the largest ``|y_r - y_s|``.

"plain" separates two sources of difference: runtime vs plain is what the checkpoint's storage
and compressed-tensors' decompression change (0 for int and FP8 layers; NVFP4's bfloat16
product); plain vs simulation is transformers' eager forward against quantlens's captured graph.

Loading: compressed-tensors (0.20) decompresses FP4 weights to bfloat16 whatever the model's
dtype, so a float32 model would fail on its first forward; the check decompresses the model
once after loading and casts those weights to the model's dtype (exact: bfloat16 is a subset of
float32), then runs it.

``verify.json``: :class:`~quantlens.runtime.verify.VerifyResult` (schema ``quantlens/verify-v1``)
with ``source: compressed-tensors``.

Example:
    >>> r = verify_compressed_tensors("ckpt", model, data)            # doctest: +SKIP
    >>> r.difference, r.difference_interval, r.flagged                # doctest: +SKIP
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import torch
from torch import Tensor, nn

from quantlens.core import jsonio
from quantlens.core.guard import preserve_model
from quantlens.core.layer_config import QuantConfig
from quantlens.core.numerics import analysis_mode
from quantlens.data.batches import extract_output, iterate
from quantlens.errors import QuantlensError
from quantlens.metrics.task import Metric, make_metric, update_metric
from quantlens.runtime.verify import Comparison, VerifyResult
from quantlens.stats.intervals import metric_interval

__all__ = ["verify_compressed_tensors", "load_checkpoint", "read_ct_info", "check_ct_available", "RUNTIME_NAME", "PLAIN_NAME"]

RUNTIME_NAME = "transformers (compressed-tensors)"
PLAIN_NAME = "float model, simulated weights"
ROUNDING_NOTE = ("plain = the float model in transformers with the simulation's weights in its Linear layers; runtime = the "
                 "checkpoint loaded by transformers and decompressed by compressed-tensors: runtime vs plain is the storage "
                 "(0 for int and fp8; nvfp4's scale product in bfloat16), plain vs simulation the eager forward vs quantlens's graph")


def check_ct_available() -> str:
    """compressed-tensors' version; one line if it or transformers is missing."""
    from quantlens.core.quiet import preload_torchao

    preload_torchao()
    try:
        import compressed_tensors
        import transformers  # noqa: F401
    except ImportError as e:
        raise QuantlensError(f"verifying a compressed-tensors checkpoint needs transformers and compressed-tensors ({e.name} is "
                             "missing): pip install 'quantlens[runtimes]'") from None
    return str(getattr(compressed_tensors, "__version__", "?"))


def read_ct_info(path: Union[str, os.PathLike]) -> dict:
    """``export.json`` of a checkpoint written by ``quantlens export --format compressed-tensors``."""
    from quantlens.export.compressed_tensors import CT_FORMAT, EXPORT_SCHEMA

    d = Path(path)
    if not (d / "config.json").is_file():
        raise QuantlensError(f"--checkpoint {d}: no config.json there; give the directory `quantlens export --format compressed-tensors` wrote")
    if not (d / "export.json").is_file():
        raise QuantlensError(f"--checkpoint {d}: no export.json beside the checkpoint, so quantlens cannot rebuild its simulation; "
                             "export it with `quantlens export --format compressed-tensors`")
    info = jsonio.load(d / "export.json", EXPORT_SCHEMA, "export record")
    if info.get("format") != CT_FORMAT:
        raise QuantlensError(f"--checkpoint {d}: export.json records format {info.get('format')!r}, not {CT_FORMAT}")
    return info


def load_checkpoint(path: Union[str, os.PathLike]) -> tuple[nn.Module, list[str]]:
    """The checkpoint as transformers loads it, decompressed, in its config's dtype; and notes on the loading."""
    check_ct_available()
    import warnings

    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path))
        except Exception as e:  # transformers raises many types; the first line says what
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise QuantlensError(f"transformers cannot load {path}: {type(e).__name__}: {first}") from None
    model.eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    notes: list[str] = []
    compressor = getattr(getattr(model, "hf_quantizer", None), "compressor", None)
    if compressor is not None and hasattr(compressor, "decompress_model"):
        compressor.decompress_model(model)
    dtype = next((p.dtype for n, p in model.named_parameters() if n.endswith("embed_tokens.weight")), torch.float32)
    cast = 0
    for m in model.modules():
        w = getattr(m, "weight", None)
        if getattr(m, "quantization_scheme", None) is not None and isinstance(w, nn.Parameter) and w.is_floating_point() and w.dtype != dtype:
            w.data = w.data.to(dtype)
            cast += 1
    if cast:
        notes.append(f"{cast} weight(s) compressed-tensors decompressed to another dtype were cast to the model's {dtype} (exact)")
    return model, notes


@dataclass
class _Pair:
    """Streaming comparison of ``b`` against ``a``: arg-max agreement per position, SQNR, max |b - a|."""

    sig: float = 0.0
    noise: float = 0.0
    max_abs: float = 0.0
    agree: int = 0
    count: int = 0

    def update(self, a: Tensor, b: Tensor) -> None:
        a, b = a.double(), b.double()
        fa = a.reshape(-1, a.shape[-1]) if a.dim() >= 3 else a.reshape(a.shape[0], -1)
        fb = b.reshape(fa.shape)
        self.agree += int((fa.argmax(-1) == fb.argmax(-1)).sum())
        self.count += fa.shape[0]
        self.sig += float((fa**2).sum())
        self.noise += float(((fb - fa) ** 2).sum())
        self.max_abs = max(self.max_abs, float((fb - fa).abs().max()) if fa.numel() else 0.0)

    def result(self) -> Comparison:
        sqnr = float("inf") if self.noise == 0 else (10 * math.log10(self.sig / self.noise) if self.sig > 0 else float("-inf"))
        return Comparison(self.agree / max(self.count, 1), sqnr, self.max_abs)


def _with_weights(model: nn.Module, qnet: Any) -> nn.Module:
    """A copy of ``model`` with the simulation's weights (quantized, or fixed float) in its layers."""
    with preserve_model(model):
        plain = copy.deepcopy(model).eval()
    modules = dict(plain.named_modules())
    with torch.no_grad():
        for layer in qnet.graph.layers:
            m = modules.get(layer.name)
            if not isinstance(m, nn.Linear):
                continue
            qw = qnet.weights.get(layer.name)
            w = qw.weight if qw is not None else qnet.graph.module(layer).weight
            m.weight = nn.Parameter(w.detach().to(m.weight.dtype).clone(), requires_grad=False)  # unties a tied lm_head
    return plain


def verify_compressed_tensors(
    checkpoint: Union[str, os.PathLike],
    model: nn.Module,
    data: Iterable[Any],
    *,
    metric: Union[str, Callable[..., Any], Metric] = "perplexity",
    output_key: Union[str, int, None] = "logits",
) -> VerifyResult:
    """Compare ``checkpoint`` (from ``quantlens export --format compressed-tensors``) in transformers
    with its simulation, the float ``model`` and the float model with the simulated weights (module docstring)."""
    from quantlens.export.compressed_tensors import read_plan_or_config, simulate

    version = check_ct_available()
    info = read_ct_info(checkpoint)
    src = info.get("source_config")
    if src and not Path(src).is_file():
        raise QuantlensError(f"the config this checkpoint was exported from ({src}) is gone: export it again")
    if src:  # a quant_config.json, maybe with fixed weights beside it: the same simulation as the export's
        qnet = simulate(model, read_plan_or_config(src)[0], data, Path(src), info.get("keep_float", []))
    else:  # export.json's config has the --keep-float layers removed already
        qnet = simulate(model, QuantConfig.from_dict(info["config"]), data)
    runtime, notes = load_checkpoint(checkpoint)
    plain = _with_weights(model, qnet)
    with preserve_model(model):
        reference = copy.deepcopy(model).eval()

    def sim(inputs: Any) -> Any:
        return qnet.graph.output(qnet.gm(*qnet.graph.flat(inputs))[0])

    nets = {"float": lambda i: i.call(reference), "sim": sim, "rt": lambda i: i.call(runtime), "plain": lambda i: i.call(plain)}
    pairs = [("float", "float"), ("float", "sim"), ("float", "rt"), ("float", "plain"), ("sim", "rt")]
    acc = {p: make_metric(metric) for p in pairs}
    cmp = {p: _Pair() for p in (("sim", "rt"), ("sim", "plain"), ("plain", "rt"), ("float", "rt"), ("float", "sim"))}
    with analysis_mode():
        for inputs, labels in iterate(data, "data"):
            inputs = inputs.to("cpu")
            y = {k: extract_output(f(inputs), output_key).detach().float() for k, f in nets.items()}
            if y["rt"].shape != y["sim"].shape:
                raise QuantlensError(f"the checkpoint's output has shape {tuple(y['rt'].shape)}, the simulation's {tuple(y['sim'].shape)}: "
                                     "give the --output-key the model returns (logits)")
            for (a, b), m in acc.items():
                update_metric(m, y[a], y[b], labels, inputs)
            for (a, b), c in cmp.items():
                c.update(y[a], y[b])
    hib = bool(acc[("float", "float")].higher_is_better)
    value = {b: float(m.compute()) for (a, b), m in acc.items() if a == "float"}
    value["rt_vs_sim"] = float(acc[("sim", "rt")].compute())
    pred = metric_interval(acc[("float", "sim")], hib)
    diff = metric_interval(acc[("sim", "rt")], hib)
    nan = float("nan")
    f = value["float"]
    sim_iv = (nan, nan) if pred is None else ((f + pred.low, f + pred.high) if not hib else (f - pred.high, f - pred.low))
    n = pred.n if pred is not None else sum(1 for _ in iterate(data, "data"))
    name = str(getattr(acc[("float", "float")], "name", "custom"))
    extra = {
        "checkpoint": str(Path(checkpoint).resolve()), "config": info.get("config"), "runtime_name": RUNTIME_NAME,
        "plain_name": PLAIN_NAME, "rounding_note": ROUNDING_NOTE, "compressed_tensors": version, "load_notes": notes,
        "layers": {k: v.get("format") for k, v in info.get("layers", {}).items()},
        "runtime_vs_float": cmp[("float", "rt")].result().to_dict(), "simulation_vs_float": cmp[("float", "sim")].result().to_dict(),
        "interval_note": "difference: the metric's paired interval of the runtime scored against the simulation; simulated: the "
                         "float metric plus the paired interval of the simulation's degradation",
    }
    if diff is None:
        extra["difference_interval_missing"] = f"metric {name!r} has no paired interval; the difference is not tested"
    return VerifyResult(
        metric_name=name, higher_is_better=hib, num_samples=int(n), float_metric=f, simulated_metric=value["sim"],
        runtime_metric=value["rt"], simulated_interval=sim_iv,
        difference_interval=(nan, nan) if diff is None else (diff.low + 0.0, diff.high + 0.0),
        runtime_vs_simulation=cmp[("sim", "rt")].result(), plain_vs_simulation=cmp[("sim", "plain")].result(),
        runtime_vs_plain=cmp[("plain", "rt")].result(), plain_metric=value["plain"], runtime_ops={}, recorded_metric=None,
        source="compressed-tensors", extra=extra,
    )
