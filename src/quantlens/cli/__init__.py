"""The ``quantlens`` command line: a thin layer over the public API.

Each sub-command lives in its own module of this package with a ``register(subparsers)``
function; :data:`COMMANDS` lists them in the order ``--help`` shows. Errors a user causes
(:class:`~quantlens.errors.QuantlensError`) print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import Optional, Sequence

from quantlens.errors import QuantlensError
from quantlens.graph.capture_cache import use_capture_cache
from quantlens.parallel.lock import release_all

__all__ = ["main", "COMMANDS"]

COMMANDS = ["analyze", "demo", "info", "report", "compare", "fix", "additivity", "plan", "export", "verify"]


_plain_format = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """quantlens's own warnings as one line; torch's and the user's keep their origin (file:line: Category)."""
    from quantlens.errors import QuantlensWarning

    if isinstance(category, type) and issubclass(category, QuantlensWarning):
        return f"quantlens: warning: {message}\n"
    return _plain_format(message, category, filename, lineno, line)


def build_parser() -> argparse.ArgumentParser:
    from quantlens import __version__

    parser = argparse.ArgumentParser(
        prog="quantlens",
        description="Layer-wise quantization analysis: which layers hurt, why, and what to do about it.",
    )
    parser.add_argument("--version", action="version", version=f"quantlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    before = warnings.formatwarning
    warnings.formatwarning = _format_warning  # type: ignore[assignment]
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = before


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with use_capture_cache(getattr(args, "capture_cache", None)):
            rc = args.func(args)
    except QuantlensError as e:
        print(f"quantlens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quantlens: interrupted", file=sys.stderr)
        return 130
    finally:
        release_all()  # the --out lock
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
