"""``quantlens export --format compressed-tensors``: a Hugging Face checkpoint directory (see
:mod:`quantlens.export.compressed_tensors`)."""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from quantlens.cli.common import console

__all__ = ["run_ct", "find_tokenizer"]


def find_tokenizer(model_spec: str, tokenizer_spec: str | None) -> Any:
    """``--tokenizer MOD:FN`` called, else the ``tokenizer`` function beside ``--model``'s (None if there is none)."""
    from quantlens.data.loading import load_callable

    if tokenizer_spec:
        return load_callable(tokenizer_spec, "--tokenizer")()
    mod = model_spec.split(":", 1)[0]
    try:
        fn = getattr(importlib.import_module(mod), "tokenizer", None)
    except ImportError:
        return None
    return fn() if callable(fn) else None


def _recorded_data(config: str) -> str | None:
    """The ``data`` ``MOD:FN`` a ``quant_config.json`` / ``plan.json`` (or its directory) records, if any."""
    p = Path(config)
    if p.is_dir():
        p = next((p / f for f in ("quant_config.json", "plan.json") if (p / f).is_file()), p / "quant_config.json")
    try:
        v = json.loads(p.read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    return v if isinstance(v, str) and ":" in v else None


def run_ct(args: argparse.Namespace) -> int:
    from quantlens.data.loading import load_data, load_model
    from quantlens.errors import QuantlensError
    from quantlens.export.compressed_tensors import check_out_dir, export_compressed_tensors

    check_out_dir(args.out)  # before loading anything: an existing checkpoint is never overwritten
    if args.no_int4:
        raise QuantlensError("--no-int4 is for onnx-qdq; a compressed-tensors checkpoint packs int4 weights as int4")
    data_spec = args.data or _recorded_data(args.config)
    if data_spec is None:
        raise QuantlensError("give --data MOD:FN: the export captures the model on one batch (the config records no data)")
    model = load_model(args.model)
    data = load_data(data_spec, "--data")
    keep = [k.strip() for k in args.keep_float.split(",") if k.strip()]
    res = export_compressed_tensors(model, args.config, args.out, data=data, tokenizer=find_tokenizer(args.model, args.tokenizer),
                                    keep_float=keep, extra={"model": args.model, "data": data_spec})
    quant = {n: w for n, w in res.layers.items() if w.quantized}
    kinds: dict[str, int] = {}
    for w in quant.values():
        kinds[w.label] = kinds.get(w.label, 0) + 1
    console.print(f"exported {len(quant)} quantized Linear layers ({', '.join(f'{k} x{v}' for k, v in kinds.items()) or 'none'}) in "
                  f"{len(res.groups)} config groups; {len(res.ignore)} in ignore (float or bf16){'; tokenizer saved' if res.tokenizer else ''}")
    fp4 = sorted({w.label for w in quant.values() if w.format in ("nvfp4-pack-quantized", "mxfp4-pack-quantized")})
    if fp4 and str(getattr(getattr(model, "config", None), "dtype", "")).endswith("float32"):
        console.print(f"note: compressed-tensors (0.20) decompresses {', '.join(fp4)} weights to bfloat16, so this float32 checkpoint "
                      "runs in transformers with dtype=torch.bfloat16, or decompressed and cast as `quantlens verify` does (docs/runtimes.md)")
    console.print(f"wrote {res.path} (config.json, model.safetensors, export.json)")
    return 0
