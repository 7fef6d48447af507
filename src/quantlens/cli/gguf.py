"""The GGUF halves of ``quantlens export`` (``--format gguf``) and ``quantlens verify`` (``--gguf``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quantlens.cli.common import console, prepare_out_dir

__all__ = ["run_export", "run_verify"]


def run_export(args: argparse.Namespace) -> int:
    """``export --format gguf``: model.gguf, tensor_types.txt and export.json into ``--out``."""
    from quantlens.data.loading import load_model
    from quantlens.export.gguf import export_gguf

    out = prepare_out_dir(args.out)
    model = load_model(args.model)
    res = export_gguf(model, args.config, out, tokenizer_gguf=getattr(args, "tokenizer_gguf", None), model_name=args.model)
    planned = sum(1 for t in res.tensors if t.fmt is not None)
    counts = ", ".join(f"{k} x{v}" for k, v in sorted(res.type_counts.items()))
    console.print(f"exported {len(res.tensors)} tensors, {planned} in the plan's GGUF types ({counts})")
    console.print(f"wrote {res.path}, {res.type_file} (llama-quantize --tensor-type-file) and {res.info_path}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    """``verify --gguf``: every tensor's type and dequantized values against the plan and the simulation."""
    from quantlens.data.loading import load_model
    from quantlens.errors import QuantlensError
    from quantlens.runtime.gguf_check import verify_gguf

    out = prepare_out_dir(args.out)
    info_path = Path(args.gguf).with_name("export.json")
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    model_spec, config = args.model or info.get("model"), args.config or info.get("config")
    if not model_spec:
        raise QuantlensError("give --model MOD:FN (the float model): no export.json beside the GGUF file records one")
    if not config:
        raise QuantlensError("give --config PATH (the plan the file should hold): no export.json beside the GGUF file records one")
    r = verify_gguf(args.gguf, load_model(model_spec), config)
    r.to_json(out / "verify.json")
    planned = [t for t in r.tensors if t.fmt is not None]
    console.print(f"GGUF check of {r.path}: {len(r.tensors)} tensors, {len(planned)} in the plan; types "
                  f"{'all as planned' if r.all_types_match else 'DIFFER'}; dequantized values "
                  f"{'equal the simulation bit for bit' if r.all_values_equal else f'DIFFER (max |diff| {r.max_abs_diff:.3g})'}")
    console.print(f"wrote {out / 'verify.json'}")
    if not r.all_types_match:
        raise QuantlensError(r.mismatch_line())
    return 0 if r.all_values_equal else 1
