"""``quantlens info``: what is registered (metrics, range estimators, fixes)."""

from __future__ import annotations

import argparse

from quantlens.cli.common import console

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="list the registered metrics, range estimators and fixes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from quantlens import __version__
    from quantlens.fixes import fixes
    from quantlens.metrics.task import metrics
    from quantlens.quant.ranges import estimators

    console.print(f"quantlens {__version__}")
    console.print(f"metrics:          {', '.join(metrics())}")
    console.print(f"range estimators: {', '.join(estimators())}")
    from quantlens.quant.conventions import conventions, get_convention

    console.print("conventions (--convention):")
    for name in conventions():
        console.print(f"  {name}: {get_convention(name).describe()}")
    console.print(f"fixes:            {', '.join(fixes())}")
    from quantlens.quant.formats import formats, get_format

    console.print("formats (--formats; effective bits per weight, scales included):")
    for name in formats():
        try:
            fmt = get_format(name.replace("{b}", "4").replace("{N}", "128"))
        except Exception:  # a template that needs other arguments
            console.print(f"  {name}")
            continue
        console.print(f"  {fmt.describe()}" if "{" not in name else f"  {name}, e.g. {fmt.describe()}")
    return 0
