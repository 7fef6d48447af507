"""A compressed-tensors checkpoint that transformers (and vLLM) load: ``export --format compressed-tensors``.

From a Hugging Face causal LM and a config whose layers carry formats (``plan --formats`` writes
``plan.json``) or int bits with a granularity (``quant_config.json``), :func:`export_compressed_tensors`
writes a checkpoint directory:

* ``config.json``: the model's config with a ``quantization_config`` (``quant_method:
  compressed-tensors``, ``quantization_status: compressed``, ``format`` the one compression
  format or ``mixed-precision``); one config group per scheme whose ``targets`` are the exact
  module names it quantizes (never regexes, so no two groups overlap), ``ignore`` every other
  Linear (bf16/fp16/float layers);
* ``model.safetensors``: every tensor of the model, each quantized layer's ``weight`` replaced by
  its compressed tensors (:mod:`quantlens.export.ct_schemes`: the simulation's own values);
* the tokenizer files, when a tokenizer is given or found; ``generation_config.json`` when the
  model has one; ``export.json`` (schema ``quantlens/export-v1``, ``format: compressed-tensors``)
  for ``quantlens verify``.

Refused in one line each: a layer format compressed-tensors cannot hold; quantized activations
(weight-only schemes here); fused siblings (layers reading the same tensor: q/k/v, gate/up)
with different schemes, which vLLM runs as one matrix; a model that is not a transformers
causal LM; an output directory that exists and is not empty.

Example:
    >>> export_compressed_tensors(model, "plan/plan.json", "ckpt", data=data)   # doctest: +SKIP
    >>> AutoModelForCausalLM.from_pretrained("ckpt")                           # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch
from torch import nn

from quantlens.core import jsonio
from quantlens.core.jsonio import write_error
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.engine.build import QuantizedNetwork, build_quantized
from quantlens.errors import QuantlensError
from quantlens.experiments.plan import PLAN_SCHEMA
from quantlens.export.ct_schemes import CTWeight, ct_weight
from quantlens.quant.spec import QuantSpec

__all__ = ["CTExport", "export_compressed_tensors", "read_plan_or_config", "simulate", "without", "quantization_config", "check_out_dir",
           "CT_FORMAT", "EXPORT_SCHEMA", "TOKENIZER_FILES"]

CT_FORMAT = "compressed-tensors"
EXPORT_SCHEMA = "quantlens/export-v1"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json",
                   "merges.txt", "added_tokens.json", "chat_template.jinja")


@dataclass(frozen=True)
class CTExport:
    """What :func:`export_compressed_tensors` wrote: the directory, the config, each layer's storage."""

    path: Path
    config: QuantConfig
    layers: dict[str, CTWeight]
    groups: dict[str, list[str]]
    ignore: list[str]
    tokenizer: bool
    extra: dict = field(default_factory=dict)

    @property
    def info_path(self) -> Path:
        return self.path / "export.json"

    def to_dict(self) -> dict:
        return {
            "schema": EXPORT_SCHEMA,
            "format": CT_FORMAT,
            "config": self.config.to_dict(),
            "layers": {n: {"format": w.label, "compression": w.format, "weights": w.weights} for n, w in self.layers.items()},
            "groups": self.groups,
            "ignore": self.ignore,
            "tokenizer": self.tokenizer,
            **self.extra,
        }


def check_out_dir(path: Union[str, os.PathLike]) -> Path:
    """``path`` as a new (or empty) directory; one line if it exists with files in it, or is a file."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise QuantlensError(f"--out {d}: exists and is not a directory; choose another path")
    if d.is_dir() and any(p.name != ".quantlens.lock" for p in d.iterdir()):
        raise QuantlensError(f"--out {d}: the directory exists and is not empty; a checkpoint goes into a new or empty directory")
    d.mkdir(parents=True, exist_ok=True)
    return d


def read_plan_or_config(source: Union[str, os.PathLike, QuantConfig]) -> tuple[QuantConfig, Optional[Path]]:
    """The config of a ``quant_config.json`` (or its directory) or of a ``plan.json`` over formats
    (its ``formats`` per layer and ``a_bits``); also the path of a ``quant_config.json``, for its saved weights."""
    if isinstance(source, QuantConfig):
        return source, None
    p = Path(source)
    if p.is_dir():
        p = p / ("quant_config.json" if (p / "quant_config.json").is_file() or not (p / "plan.json").is_file() else "plan.json")
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise QuantlensError(f"--config {p}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise QuantlensError(f"--config {p}: not JSON ({e})") from None
    if isinstance(raw, dict) and raw.get("schema") == PLAN_SCHEMA:
        fmts = raw.get("formats")
        if not isinstance(fmts, dict) or not fmts:
            raise QuantlensError(f"{p} is a plan over bit-widths: export its quant_config.json (beside it) instead")
        a = raw.get("a_bits")
        act = None if a is None else QuantSpec(bits=int(a), symmetric=False)
        return QuantConfig(tuple((str(n), LayerQuant(weight=QuantSpec(format=str(f)), act=act)) for n, f in fmts.items())), None
    return QuantConfig.from_json(p), p


def _check_weight_only(config: QuantConfig) -> None:
    for name, lq in config.layers:
        if lq.act is not None:
            raise QuantlensError(f"layer {name}: {lq.a_bits}-bit activations cannot go into this compressed-tensors export, which "
                                 "writes weight-only schemes (W4A16, W8A16, FP8, NVFP4A16, MXFP4A16): plan with --a-bits none")


def without(config: QuantConfig, keep_float: Iterable[str]) -> QuantConfig:
    """``config`` without the ``keep_float`` layers (one line for a name it does not configure)."""
    keep = [k for k in keep_float if k]
    unknown = [k for k in keep if config.get(k) is None]
    if unknown:
        raise QuantlensError(f"--keep-float names layer(s) the config does not quantize: {', '.join(unknown)}")
    return QuantConfig(tuple((n, lq) for n, lq in config.layers if n not in keep), config.act_estimator)


def simulate(model: nn.Module, config: QuantConfig, data: Iterable[Any], source: Optional[Path] = None,
             keep_float: Iterable[str] = ()) -> QuantizedNetwork:
    """quantlens's simulation of ``config`` on ``model`` (weight-only: no calibration): the fixed
    weights saved beside a ``quant_config.json`` when there are any, else the model's own;
    ``keep_float`` layers stay float."""
    from quantlens.core.guard import preserve_model
    from quantlens.network.measure import UntraceableError, capture_traceable

    keep = list(keep_float)
    config = without(config, keep)
    _check_weight_only(config)
    if source is not None and (source.parent / "weights.safetensors").is_file():
        from quantlens.export.rebuild import load_quantized

        return load_quantized(model, source, data=data, keep_float=keep)[0]
    if any(lq.fixes for _, lq in config.layers):
        raise QuantlensError("the config has fixes but no weights.safetensors beside it: export the directory `quantlens fix` wrote")
    with preserve_model(model):
        try:
            graph = capture_traceable(model, data)
        except UntraceableError as e:
            raise QuantlensError(f"export and verify need a model torch.fx or torch.export can capture ({e.reason})") from None
    return build_quantized(graph, config, [], "cpu")


def _check_causal_lm(model: nn.Module) -> Any:
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "to_dict") or not getattr(model, "can_generate", lambda: False)():
        raise QuantlensError(f"a compressed-tensors checkpoint is a Hugging Face causal LM; this model ({type(model).__name__}) is not "
                             "a transformers model with a config and a generation head (AutoModelForCausalLM)")
    return cfg


def _check_siblings(qnet: QuantizedNetwork, layers: dict[str, CTWeight]) -> None:
    from quantlens.graph.layers import sibling_groups

    for group in sibling_groups(qnet.graph):
        keys = {layers[n].key if n in layers else "float" for n in group}
        if len(group) > 1 and len(keys) > 1:
            what = ", ".join(f"{n.rsplit('.', 1)[-1]} {layers[n].label if n in layers else 'float'}" for n in group)
            raise QuantlensError(f"fused siblings {', '.join(group)} read the same tensor and vLLM runs them as one matrix, but their "
                                 f"formats differ ({what}): give them one format (plan --formats does)")


def quantization_config(layers: dict[str, CTWeight], linears: Iterable[str]) -> tuple[dict, dict[str, list[str]], list[str]]:
    """``quantization_config`` (compressed-tensors' schema), its groups ``{group: [modules]}`` and ``ignore``."""
    by_key: dict[str, list[str]] = {}
    for n, w in layers.items():
        if w.quantized:
            by_key.setdefault(w.key, []).append(n)
    groups, config_groups = {}, {}
    for i, (key, names) in enumerate(by_key.items()):
        k = json.loads(key)
        groups[f"group_{i}"] = names
        config_groups[f"group_{i}"] = {"targets": names, "weights": k["weights"], "input_activations": None,
                                       "output_activations": None, "format": k["format"]}
    ignore = [n for n in linears if not (n in layers and layers[n].quantized)]
    fmts = {json.loads(k)["format"] for k in by_key}
    qc = {"quant_method": "compressed-tensors", "format": fmts.pop() if len(fmts) == 1 else "mixed-precision",
          "quantization_status": "compressed", "config_groups": config_groups, "ignore": ignore, "kv_cache_scheme": None,
          "global_compression_ratio": None}
    return qc, groups, ignore


def _tokenizer(tokenizer: Any, model: nn.Module, out: Path) -> bool:
    """Save ``tokenizer`` (an object with ``save_pretrained``), or copy the files beside the model's own checkpoint."""
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
        return True
    src = Path(str(getattr(getattr(model, "config", None), "_name_or_path", "") or ""))
    found = [src / f for f in TOKENIZER_FILES if src.is_dir() and (src / f).is_file()]
    for f in found:
        shutil.copy2(f, out / f.name)
    return bool(found)


def _drop_tied(raw: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    """Keep one of the tensors that share storage in the model (a tied ``lm_head.weight``): transformers ties them again."""
    seen: set[tuple] = set()
    for k, v in raw.items():
        key = (v.data_ptr(), tuple(v.shape), v.dtype)
        if key in seen and f"{k}" in state and v.numel():
            del state[k]
        seen.add(key)


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt", "producer": "quantlens"})
        os.replace(tmp, path)
        os.chmod(path, 0o644)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(path, e) from None


def export_compressed_tensors(
    model: nn.Module,
    config: Union[str, os.PathLike, QuantConfig],
    out_dir: Union[str, os.PathLike],
    *,
    data: Iterable[Any],
    tokenizer: Any = None,
    keep_float: Iterable[str] = (),
    extra: Optional[dict] = None,
) -> CTExport:
    """Write the checkpoint of ``model`` quantized by ``config`` into ``out_dir`` (module docstring).

    ``data``: one batch, for the capture of the simulation. ``tokenizer``: saved beside the
    weights (default: the tokenizer files of the model's own checkpoint directory, if any).
    ``keep_float`` layers are left in float (in ``ignore``).
    """
    model_cfg = _check_causal_lm(model)
    cfg, source = read_plan_or_config(config)
    keep = list(keep_float)
    _check_weight_only(without(cfg, keep))
    out = check_out_dir(out_dir)
    modules = dict(model.named_modules())
    for name, lq in without(cfg, keep).layers:  # what the checkpoint cannot hold is refused before the capture
        mod = modules.get(name)
        if not isinstance(mod, nn.Linear):
            raise QuantlensError(f"layer {name}: not an nn.Linear of the model ({type(mod).__name__ if mod is not None else 'no such module'}), "
                                 "so it cannot be a compressed-tensors target")
        ct_weight(name, mod.weight, lq.weight_spec())
    qnet = simulate(model, cfg, data, source, keep)
    layers: dict[str, CTWeight] = {}
    for name, lq in qnet.config.layers:
        fixed = qnet.graph.module(qnet.graph.layer(name)).weight
        ct = ct_weight(name, fixed, lq.weight_spec())
        qw = qnet.weights.get(name)
        if qw is not None and ct.values is not None and not torch.equal(ct.values.to(qw.weight.dtype), qw.weight.detach().cpu()):
            raise AssertionError(f"layer {name}: the checkpoint's values are not the simulation's")  # pragma: no cover
        layers[name] = ct
    _check_siblings(qnet, layers)
    linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    qc, groups, ignore = quantization_config(layers, linears)
    raw = model.state_dict()
    state = {k: v.detach().cpu().clone().contiguous() for k, v in raw.items()}
    for layer in qnet.graph.layers:  # the simulation's float weights (after any fix) for every layer
        if layer.name in modules and f"{layer.name}.weight" in state:
            m = qnet.graph.module(layer)
            state[f"{layer.name}.weight"] = m.weight.detach().cpu().to(state[f"{layer.name}.weight"].dtype).clone()
            if m.bias is not None:
                if f"{layer.name}.bias" not in state:
                    raise QuantlensError(f"layer {layer.name}: a fix gave it a bias, which the model's {type(modules[layer.name]).__name__} "
                                         "has no place for in a checkpoint")
                state[f"{layer.name}.bias"] = m.bias.detach().cpu().to(state[f"{layer.name}.bias"].dtype).clone()
    for name, ct in layers.items():
        if ct.tensors:
            del state[f"{name}.weight"]
            state.update({f"{name}.{k}": v.contiguous() for k, v in ct.tensors.items()})
    d = model_cfg.to_dict()
    tied = bool(d.get("tie_word_embeddings")) and layers.get("lm_head", CTWeight("float", "dense", None)).tensors != {}
    if tied:
        d["tie_word_embeddings"] = False  # lm_head gets its own (quantized) tensors; the embedding stays float
    else:
        _drop_tied(raw, state)
    d["architectures"] = d.get("architectures") or [type(model).__name__]
    d["quantization_config"] = qc
    _save(state, out / "model.safetensors")
    jsonio.dump(d, out / "config.json")
    gen = getattr(model, "generation_config", None)
    if gen is not None and hasattr(gen, "to_json_file"):
        gen.to_json_file(str(out / "generation_config.json"))
    has_tok = _tokenizer(tokenizer, model, out)
    res = CTExport(out, qnet.config, layers, groups, ignore, has_tok,
                   extra={"untied_lm_head": tied, "keep_float": keep, "source_config": None if source is None else str(source.resolve()),
                          "source": None if isinstance(config, QuantConfig) else str(Path(config).resolve()), **(extra or {})})
    jsonio.dump(res.to_dict(), res.info_path)
    return res
