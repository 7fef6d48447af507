"""Options shared by ``fix``, ``additivity`` and ``plan`` (the commands that act on a sweep)."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path
from typing import Any, Optional

from quantlens.core.experiment import ExperimentSpec
from quantlens.sweep.results import SweepResult
from quantlens.errors import QuantlensError
from quantlens.quant.spec import check_bits
from quantlens.core.workload import RunOptions, Workload
from quantlens.cli.common import parse_a_bits

__all__ = ["add_common", "parse_bits", "parse_columns", "load_inputs", "load_sweep", "sweep_or_run", "experiment_spec"]


def add_common(p: argparse.ArgumentParser) -> None:
    from quantlens.metrics.task import metrics

    p.add_argument("--metric", default="top1", help=f"task metric: {', '.join(metrics())} (default: top1)")
    p.add_argument("--a-bits", default=None, help="activation bits, or 'none' for float activations (default: 8)")
    p.add_argument("--a-format", default=None, metavar="FMT",
                   help="activations in a format instead of --a-bits: int8, fp8-e4m3, mxfp8, mxfp4, nvfp4, none")
    p.add_argument("--granularity", default="per-tensor", help="weights: per-tensor, per-channel or per-group-N")
    p.add_argument("--reference", metavar="MOD:FN", help="float model to measure against (for a fine-tuned/QAT model; see docs/fixes.md)")
    p.add_argument("--results", metavar="DIR", help="reuse the sweep in DIR/results.json (from `quantlens analyze`) instead of running one")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_bits(text: Any, option: str) -> int:
    try:
        b = int(str(text))
    except ValueError:
        raise QuantlensError(f"{option} {text!r}: expected an integer in 2..16") from None
    return check_bits(b, option)


def load_workload(args: argparse.Namespace, need_fx: bool = False) -> Workload:
    """The :class:`~quantlens.core.workload.Workload` of the MOD:FN options, ``--metric`` and
    ``--output-key`` (see :func:`load_inputs`)."""
    model, data, calib, reference = load_inputs(args, need_fx)
    return Workload(model, data, calib, args.metric, reference, args.output_key)


def run_options(args: argparse.Namespace) -> RunOptions:
    """``--device`` and the progress bars (off with ``--no-progress``)."""
    return RunOptions(args.device, progress=not args.no_progress)


def load_inputs(args: argparse.Namespace, need_fx: bool = False) -> tuple[Any, Any, Any, Any]:
    """``(model, data, calib or None, reference or None)`` from the MOD:FN options.

    ``need_fx``: the command only works on a model torch.fx or torch.export can capture (``fix``): say so before the sweep.
    """
    from quantlens.network.measure import capture_traceable
    from quantlens.core.guard import preserve_model
    from quantlens.data.loading import load_data, load_model

    model = load_model(args.model)
    data = load_data(args.data)
    if str(args.model).endswith(".onnx"):
        from quantlens.data.batches import iterate
        from quantlens.data.model_files import check_onnx

        check_onnx(args.model, model, next(iter(iterate(data, "--data")))[0])  # the conversion must be onnxruntime's model
    if need_fx:
        with preserve_model(model):
            capture_traceable(model, data)  # fail before the sweep, not after it
    calib = load_data(args.calib, "--calib") if args.calib else None
    reference = load_model(args.reference, "--reference") if args.reference else None
    return model, data, calib, reference


def experiment_spec(args: argparse.Namespace) -> ExperimentSpec:
    """The experiment's :class:`~quantlens.core.experiment.ExperimentSpec` from ``--a-bits`` (or
    ``--a-format``), ``--granularity`` and ``--convention``."""
    a_format = getattr(args, "a_format", None)
    if a_format is not None and args.a_bits is not None:
        raise QuantlensError("give --a-format or --a-bits, not both: --a-format int8 is 8-bit integer activations, none float")
    return ExperimentSpec(parse_a_bits(args.a_bits or "8"), args.granularity, getattr(args, "convention", "quantlens"), a_format)


def parse_columns(text: Any, option: str) -> list:
    """``--w-bits``/``--low``/``--high``: bit-widths or format names, comma-separated (one line if unknown or empty)."""
    from quantlens.core.experiment import parse_column

    cols = [parse_column(t.strip(), option) for t in str(text).split(",") if t.strip()]
    if not cols:
        raise QuantlensError(f"{option} is empty: give a bit-width or a format name, e.g. 4 or nvfp4")
    return list(dict.fromkeys(cols))


def load_sweep(args: argparse.Namespace, need_bits: list) -> Optional[SweepResult]:
    """The sweep from ``--results`` (checked to have ``need_bits``), or None to run one."""
    if not args.results:
        return None
    sweep = SweepResult.from_json(args.results)
    experiment_spec(args).check_sweep(sweep, need_bits, args.metric, where=f"--results {args.results}")
    return sweep


def sweep_or_run(args: argparse.Namespace, out: Path, w: Workload, w_bits: list, a_bits: Optional[int] = None) -> SweepResult:
    """The ``--results`` sweep, or a fresh one; either way also written to ``out/results.json``.

    With ``results.json`` next to ``fix.json`` / ``additivity.json`` / ``plan.json``,
    ``quantlens report OUT`` renders them together.
    """
    from quantlens.sweep.api import analyze

    sweep = load_sweep(args, w_bits)
    cfg = experiment_spec(args).sweep_config(w_bits)
    if sweep is None and getattr(args, "group_by", "layer") == "role":  # plan: one bit-width per role
        from quantlens.experiments.role_sweep import analyze_roles

        sweep = analyze_roles(w, config=cfg, options=run_options(args), model_name=args.model)
    elif sweep is None:
        sweep = analyze(w, config=cfg, device=args.device, model_name=args.model, progress=not args.no_progress)
    target = out / "results.json"
    source = Path(args.results) if args.results else None
    if source is not None and source.is_dir():
        source = source / "results.json"
    if source is None or not target.exists() or not source.exists() or not target.samefile(source):
        if target.exists():  # never lose an earlier sweep: keep it beside the new one
            backup = target.with_name("results.previous.json")
            os.replace(target, backup)
            warnings.warn(f"{target} existed: kept as {backup.name} (pass --results {out} to reuse a sweep)", stacklevel=2)
        sweep.to_json(target)
    return sweep
