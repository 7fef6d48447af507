"""``quantlens export --format gguf``: a plan over GGUF types as a GGUF file that llama.cpp reads.

For a Llama-family transformers model and a :class:`~quantlens.core.layer_config.QuantConfig`
(``plan.json`` of ``quantlens plan --formats``, or ``quant_config.json``; :func:`read_plan`) whose
layers have GGUF formats, :func:`export_gguf` writes

* ``model.gguf``: every parameter under llama.cpp's name (:mod:`.gguf_llama`), ``attn_q``/``attn_k``
  rows permuted as convert_hf_to_gguf.py does; a planned layer's weight in its ggml type (the
  bytes of :func:`~quantlens.quant.formats.ggml.ggml_encode`, the same codes the simulation
  dequantizes; ``fp16``/``bf16`` as F16/BF16), every other tensor (norms, embeddings, layers the
  plan leaves float) in F32, as the simulation keeps them; a tied ``lm_head`` not in the plan is
  not written (llama.cpp reads ``token_embd``); the ``llama.*`` metadata, and the tokenizer's
  ``tokenizer.*`` keys copied from a GGUF that has them (``tokenizer_gguf``) when given;
* ``tensor_types.txt``: the plan for ``llama-quantize --tensor-type-file``: one line per planned
  tensor, ``^blk\\.3\\.attn_q\\.weight$=q4_k``: an anchored, escaped, lower-case regex that matches
  that tensor alone (llama-quantize lower-cases patterns and searches them as regexes);
* ``export.json`` (schema ``quantlens/export-gguf-v1``): the model, the config, each tensor's type.

Refused in one line: a layer whose format GGUF cannot hold (int grids, FP8, NVFP4, OCP MX, ...;
the message lists what it can), a K-quant on rows that are not a multiple of 256, a layer with
fixes, a model family the writer does not know, an existing ``model.gguf``. Activations are not
stored: llama.cpp quantizes them its own way (a config's activation formats are reported, not written).

Example:
    >>> res = export_gguf(model, "plan/quant_config.json", "out/")          # doctest: +SKIP
    >>> res.path, res.type_file                                             # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from quantlens.core import jsonio
from quantlens.core.layer_config import LayerQuant, QuantConfig
from quantlens.errors import QuantlensError, QuantlensWarning
from quantlens.export.gguf_llama import check_family, gguf_names, permute, permute_heads, write_metadata
from quantlens.export.rebuild import read_config
from quantlens.quant.formats import fake_quantize, get_format
from quantlens.quant.formats.ggml import GGML_TYPES, ggml_encode
from quantlens.quant.formats.ggml_pack import pack
from quantlens.quant.spec import QuantSpec

__all__ = ["GgufTensor", "GgufExport", "plan_tensors", "export_gguf", "read_plan", "gguf_type", "holdable_formats", "type_lines",
           "GGUF_SCHEMA", "GGUF_FILE", "TYPE_FILE"]

GGUF_SCHEMA = "quantlens/export-gguf-v1"
PLAN_SCHEMA = "quantlens/plan-v1"
GGUF_FILE, TYPE_FILE, INFO_FILE = "model.gguf", "tensor_types.txt", "export.json"
_FLOATS = {"fp16": "F16", "bf16": "BF16"}
_FILE_TYPE = {"Q8_0": "MOSTLY_Q8_0", "Q6_K": "MOSTLY_Q6_K", "Q5_0": "MOSTLY_Q5_0", "Q4_1": "MOSTLY_Q4_1", "Q4_0": "MOSTLY_Q4_0",
              "Q4_K": "MOSTLY_Q4_K_M", "MXFP4": "MOSTLY_MXFP4_MOE", "F16": "MOSTLY_F16", "BF16": "MOSTLY_BF16", "F32": "ALL_F32"}


def gguf_type(fmt: str) -> Optional[str]:
    """The ggml type that holds the format ``fmt`` exactly (``Q4_K`` for ``gguf-q4_k``), or None."""
    f = get_format(fmt)
    return GGML_TYPES[f.name][0] if f.family == "ggml" else _FLOATS.get(f.name)


def holdable_formats() -> list[str]:
    """The formats a GGUF file holds, best first."""
    return [*GGML_TYPES, *_FLOATS]


@dataclass(frozen=True)
class GgufTensor:
    """One tensor of the file: its GGUF ``name``, HF ``source`` parameter, ``ggml_type``, the plan's
    ``fmt`` and ``layer`` (None: not in the plan, F32) and ``heads`` of the Q/K permutation (or None)."""

    name: str
    source: str
    ggml_type: str
    fmt: Optional[str] = None
    layer: Optional[str] = None
    heads: Optional[int] = None

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "type": self.ggml_type, "format": self.fmt, "layer": self.layer,
                "permuted_heads": self.heads}


@dataclass(frozen=True)
class GgufExport:
    """What :func:`export_gguf` wrote."""

    path: Path
    type_file: Path
    info_path: Path
    tensors: tuple[GgufTensor, ...]

    @property
    def type_counts(self) -> dict[str, int]:
        return dict(Counter(t.ggml_type for t in self.tensors))


def read_plan(source: Union[str, os.PathLike, QuantConfig]) -> QuantConfig:
    """The config of ``source``: a :class:`QuantConfig`, ``plan.json`` (each layer's ``format``, else its
    ``w_bits``; the plan's ``a_bits``), ``quant_config.json``, or a directory holding one (``plan.json`` first)."""
    if isinstance(source, QuantConfig):
        return source
    p = Path(source)
    if p.is_dir():
        p = p / "plan.json" if (p / "plan.json").is_file() else p / "quant_config.json"
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise QuantlensError(f"--config {source}: cannot read a plan or config there ({e})") from None
    if not (isinstance(raw, dict) and raw.get("schema") == PLAN_SCHEMA):
        return read_config(p)[0]
    a_bits = raw.get("a_bits")
    act = None if a_bits is None else QuantSpec(bits=int(a_bits), symmetric=False)
    layers = []
    for row in raw.get("layers", []):
        spec = QuantSpec(format=str(row["format"])) if row.get("format") else QuantSpec(bits=int(row["w_bits"]))
        layers.append((str(row["layer"]), LayerQuant(weight=spec, act=act)))
    return QuantConfig(tuple(layers))


def _planned(model: Any, config: QuantConfig, names: dict[str, str]) -> dict[str, tuple[str, str, str]]:
    """HF parameter -> (format, ggml type, layer) for every layer whose weights the config quantizes."""
    out: dict[str, tuple[str, str, str]] = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    for layer, lq in config.layers:
        spec = lq.weight
        if spec is None:
            continue
        pname = f"{layer}.weight"
        if pname not in params:
            raise QuantlensError(f"layer {layer} of the config has no weight in the model (no parameter {pname})")
        fmt = spec.format_name
        t = gguf_type(spec.format) if spec.format is not None else None
        if t is None:
            raise QuantlensError(f"layer {layer}: {fmt} has no GGUF type; GGUF holds {', '.join(holdable_formats())} "
                                 "(or leave the layer out of the plan: F32)")
        if lq.fixes:
            raise QuantlensError(f"layer {layer} has fixes ({', '.join(lq.fixes)}): the GGUF export writes the model's own "
                                 "weights in the plan's formats; export a plan without fixes")
        block = get_format(fmt).block
        k = params[pname][0].numel() if params[pname].dim() > 1 else params[pname].numel()
        if block and k % block:
            fits = [f for f in holdable_formats() if k % (get_format(f).block or 1) == 0]
            raise QuantlensError(f"layer {layer}: {fmt} needs rows of a multiple of {block} values, {pname} has rows of {k}; "
                                 f"for it GGUF holds {', '.join(fits)}")
        out[pname] = (get_format(fmt).name, t, layer)
    return out


def plan_tensors(model: Any, config: QuantConfig) -> list[GgufTensor]:
    """Every tensor of the GGUF file of ``model`` under ``config``, in the model's parameter order."""
    names = gguf_names(model)  # checks the family
    planned = _planned(model, config, names)
    out: list[GgufTensor] = []
    seen: set[int] = set()
    for pname, p in model.named_parameters(remove_duplicate=False):
        if pname not in planned and id(p) in seen:
            continue  # a tied weight (lm_head = embed_tokens): llama.cpp reads token_embd
        seen.add(id(p))
        fmt, t, layer = planned.get(pname, (None, "F32", None))
        out.append(GgufTensor(names[pname], pname, t, fmt, layer, permute_heads(model, names[pname])))
    return out


def tensor_data(model: Any, tensor: GgufTensor) -> tuple[np.ndarray, Optional[str]]:
    """``(array, raw ggml type)`` to hand ``GGUFWriter.add_tensor`` (raw type None: F32 / F16 arrays)."""
    w = dict(model.named_parameters(remove_duplicate=False))[tensor.source].detach().to(torch.float32).cpu()
    if tensor.heads is not None:
        w = permute(w, tensor.heads)
    t = tensor.ggml_type
    if t == "F32":
        return w.numpy(), None
    if t in ("F16", "BF16"):
        sim = fake_quantize(w, tensor.fmt or "")  # saturating cast; exact in the type
        if t == "F16":
            return sim.numpy().astype(np.float16), None
        return sim.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8).reshape(sim.shape[0], -1), "BF16"
    m = w.reshape(w.shape[0], -1) if w.dim() > 1 else w.reshape(1, -1)
    return pack(ggml_encode(m, tensor.fmt or "")), t


def type_lines(tensors: list[GgufTensor]) -> list[str]:
    """``llama-quantize --tensor-type-file`` lines for the planned tensors (module docstring)."""
    return [f"^{re.escape(t.name)}$={t.ggml_type}".lower() for t in tensors if t.fmt is not None]


def _copy_tokenizer(writer: Any, source: Union[str, os.PathLike], vocab_size: int) -> None:
    import gguf

    try:
        reader = gguf.GGUFReader(str(source))
    except (OSError, ValueError) as e:
        raise QuantlensError(f"--tokenizer-gguf {source}: not a readable GGUF file ({e})") from None
    fields = {k: f for k, f in reader.fields.items() if k.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" not in fields:
        raise QuantlensError(f"--tokenizer-gguf {source}: the file has no tokenizer (no tokenizer.ggml.tokens)")
    n = len(fields["tokenizer.ggml.tokens"].contents())
    if n != vocab_size:
        raise QuantlensError(f"--tokenizer-gguf {source}: its tokenizer has {n} tokens, the model {vocab_size}")
    for key, f in fields.items():
        main = f.types[0]
        sub = f.types[-1] if main == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, f.contents(), main, sub_type=sub)


def export_gguf(
    model: Any,
    config: Union[str, os.PathLike, QuantConfig],
    out_dir: Union[str, os.PathLike],
    *,
    tokenizer_gguf: Union[str, os.PathLike, None] = None,
    model_name: Optional[str] = None,
) -> GgufExport:
    """Write ``model.gguf``, ``tensor_types.txt`` and ``export.json`` into ``out_dir`` (module docstring)."""
    import gguf

    cfg_model = check_family(model)
    base = read_plan(config)
    out = Path(out_dir)
    path, type_path, info_path = out / GGUF_FILE, out / TYPE_FILE, out / INFO_FILE
    if path.exists():
        raise QuantlensError(f"{path} exists: remove it or give another --out")
    tensors = plan_tensors(model, base)
    acts = [n for n, lq in base.layers if lq.act is not None]
    if acts:
        warnings.warn(f"GGUF stores weights only: the activation quantization of {len(acts)} layer(s) ({acts[0]}, ...) is not "
                      "written (llama.cpp quantizes activations its own way)", QuantlensWarning, stacklevel=2)
    out.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    name = model_name or getattr(cfg_model, "_name_or_path", None) or type(model).__name__
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        write_metadata(writer, model, str(name))
        by_params = Counter()
        for t in tensors:
            if t.fmt is not None:
                by_params[t.ggml_type] += int(np.prod(dict(model.named_parameters(remove_duplicate=False))[t.source].shape))
        main_type = by_params.most_common(1)[0][0] if by_params else "F32"
        writer.add_file_type(int(gguf.LlamaFileType[_FILE_TYPE[main_type]]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if tokenizer_gguf is not None:
            _copy_tokenizer(writer, tokenizer_gguf, int(cfg_model.vocab_size))
        with torch.no_grad():
            for t in tensors:
                arr, raw = tensor_data(model, t)
                writer.add_tensor(t.name, arr, raw_dtype=None if raw is None else gguf.GGMLQuantizationType[raw])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    type_path.write_text("\n".join(type_lines(tensors)) + "\n", encoding="utf-8")
    info = {
        "schema": GGUF_SCHEMA, "format": "gguf", "file": GGUF_FILE, "tensor_type_file": TYPE_FILE,
        "model": model_name, "config": None if isinstance(config, QuantConfig) else str(config),
        "tokenizer": None if tokenizer_gguf is None else str(tokenizer_gguf),
        "file_type": _FILE_TYPE[main_type], "types": dict(Counter(t.ggml_type for t in tensors)),
        "activations": None if not acts else
        "not stored (GGUF holds weights; llama.cpp quantizes activations its own way): " + ", ".join(acts),
        "tensors": [t.to_dict() for t in tensors],
    }
    jsonio.dump(info, info_path)
    return GgufExport(path, type_path, info_path, tuple(tensors))
