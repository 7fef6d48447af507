"""Silence torch.export while it works: its logs, its graph dumps on failure, its warnings.

Used where quantlens exports (:mod:`quantlens.graph.export`) or loads (``.pt2`` files, in
:mod:`quantlens.data.model_files`) a program; what the program says later, in the float pass,
is shown as usual.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator

__all__ = ["quiet"]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence what torch.export prints while it works (its logs, graph dumps on failure, warnings);
    what the exported model says later, in the float pass, is shown as usual."""
    sink = io.StringIO()
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
