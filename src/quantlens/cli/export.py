"""``quantlens export``: the quantized network as a model a runtime executes (``onnx-qdq``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from quantlens.cli.common import add_capture_cache_arg, console, prepare_out_dir

__all__ = ["register", "run", "FORMATS"]

FORMATS = ("onnx-qdq", "compressed-tensors", "gguf")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write the quantized network (bits, ranges, fixes) as a QDQ ONNX model for onnxruntime")
    p.add_argument("--model", required=True, metavar="MOD:FN", help="function returning the float nn.Module")
    p.add_argument("--config", required=True, metavar="PATH", help="quant_config.json (from `quantlens fix` or `plan`) or its directory")
    p.add_argument("--format", default="onnx-qdq", choices=FORMATS,
                   help="output format (default: onnx-qdq); compressed-tensors: a Hugging Face checkpoint directory (--config may be a plan.json over formats)")
    p.add_argument("--tokenizer", metavar="MOD:FN", help="compressed-tensors: the tokenizer to save beside the weights (default: the "
                   "`tokenizer` function beside --model's, else the files of the model's own checkpoint)")
    p.add_argument("--data", metavar="MOD:FN", help="batches for the exporter's sample input (default: the data the config was made with)")
    p.add_argument("--calib", metavar="MOD:FN", help="calibration batches, only if the config has no saved ranges/weights")
    p.add_argument("--keep-float", default="", metavar="LAYER,...", help="layers to keep in float (float fallback)")
    p.add_argument("--no-int4", action="store_true", help="store <= 4-bit weights as int8 instead of INT4")
    p.add_argument("--output-key", default=None, help="key/attribute/index of the output tensor when the model returns a tuple/dict")
    p.add_argument("--tokenizer-gguf", metavar="PATH", help="gguf: copy the tokenizer.* keys from this GGUF file")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (model.onnx or model.gguf, export.json)")
    add_capture_cache_arg(p)
    p.set_defaults(func=run)


def recorded_spec(config: str, key: str) -> str | None:
    """A ``MOD:FN`` the config's writer recorded (``data``, ``calib``, ``model``), if any."""
    p = Path(config)
    p = p / "quant_config.json" if p.is_dir() else p
    try:
        v = json.loads(p.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError):
        return None
    return v if isinstance(v, str) and ":" in v else None


def run(args: argparse.Namespace) -> int:
    from quantlens.errors import QuantlensError
    from quantlens.data.loading import load_data, load_model

    if args.format == "compressed-tensors":
        from quantlens.cli.export_ct import run_ct

        return run_ct(args)
    if args.format == "gguf":
        from quantlens.cli.gguf import run_export

        return run_export(args)
    from quantlens.export.onnx import check_onnx_available, export_onnx

    check_onnx_available()
    out = prepare_out_dir(args.out)
    model = load_model(args.model)
    data_spec = args.data or recorded_spec(args.config, "data")
    if data_spec is None:
        raise QuantlensError("give --data MOD:FN: the exporter needs one batch of inputs (the config records no data)")
    data = load_data(data_spec, "--data")
    calib = load_data(args.calib, "--calib") if args.calib else None
    keep = [k.strip() for k in args.keep_float.split(",") if k.strip()]
    res = export_onnx(model, args.config, out, data=data, calib=calib, keep_float=keep, output_key=args.output_key,
                      int4=not args.no_int4, model_name=args.model)
    info = json.loads(res.info_path.read_text(encoding="utf-8"))
    info["data"] = data_spec
    from quantlens.core import jsonio

    jsonio.dump(info, res.info_path)
    n_q = sum(1 for f in res.layers.values() if f.storage is not None)
    n_int4 = sum(1 for f in res.layers.values() if f.storage == "int4")
    n_act = sum(1 for f in res.layers.values() if f.a_bits is not None)
    console.print(f"exported {n_q} layers with quantized weights ({n_int4} as INT4), {n_act} with uint8 activations; "
                  f"float: {', '.join(keep) or 'none kept'} (opset {res.opset}, {'dynamic' if res.dynamic_batch else 'fixed'} batch)")
    console.print(f"wrote {res.path} and {res.info_path}")
    return 0
