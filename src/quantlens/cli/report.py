"""``quantlens report DIR``: rebuild ``DIR/report.html`` from ``DIR/results.json`` alone."""

from __future__ import annotations

import argparse

from quantlens.cli.common import console

__all__ = ["register", "run", "add_report_args"]


def add_report_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``report`` and ``compare``."""
    p.add_argument("--saturate", type=float, default=None, metavar="X",
                   help="heatmap colour saturates at this degradation (default 0.05 = 5%%)")
    p.add_argument("--bits", type=int, default=None, help="weight bit-width the page opens on (default: 4 if swept)")
    p.add_argument("--title", default=None, help="page title")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="rebuild the HTML report of a results directory (no recomputation)")
    p.add_argument("dir", metavar="DIR", help="directory with results.json (or the results.json file)")
    p.add_argument("--out", default=None, metavar="FILE", help="output HTML file (default: DIR/report.html)")
    add_report_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from quantlens.report import ReportOptions, write_report

    opts = ReportOptions(saturate=args.saturate, bits=args.bits, title=args.title)
    path = write_report(args.dir, args.out, opts)
    console.print(f"wrote {path}")
    return 0
