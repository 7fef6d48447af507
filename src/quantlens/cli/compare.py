"""``quantlens compare A B [C ...] --out FILE``: overlay the per-layer profiles of several runs."""

from __future__ import annotations

import argparse

from quantlens.cli.common import console
from quantlens.cli.report import add_report_args

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="overlay the per-layer profiles of several runs in one HTML page")
    p.add_argument("runs", nargs="+", metavar="RUN", help="result directories (or results.json files); the first is the reference")
    p.add_argument("--out", required=True, metavar="FILE", help="output HTML file")
    p.add_argument("--labels", default=None, help="comma-separated names of the runs (default: their directory names)")
    add_report_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from quantlens.report import ReportOptions, write_compare

    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    opts = ReportOptions(saturate=args.saturate, bits=args.bits, title=args.title)
    path = write_compare(args.runs, args.out, labels, opts)
    console.print(f"wrote {path}")
    return 0
