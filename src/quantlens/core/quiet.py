"""Silence torch.export while it works: its logs, its graph dumps on failure, its warnings.

Used where quantlens exports (:mod:`quantlens.graph.export`) or loads (``.pt2`` files, in
:mod:`quantlens.data.model_files`) a program; what the program says later, in the float pass,
is shown as usual.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import sys
import warnings
from typing import Iterator

__all__ = ["quiet", "preload_torchao"]


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


def preload_torchao() -> None:
    """Import torchao, when it is installed and not imported yet, under :func:`quiet`.

    transformers imports torchao while it loads a model; torchao then warns once per process
    about each of its compiled kernels this machine cannot load (``Failed to load
    .../_C_cutlass_90a.abi3.so``: CUDA kernels on a CPU) and torch about its enum registrations:
    lines that say nothing about the user's model. Imported here first, they are not printed; an
    import that fails is left for transformers to report."""
    if "torchao" in sys.modules or importlib.util.find_spec("torchao") is None:
        return
    with quiet():
        try:
            import torchao  # noqa: F401
            import torchao.prototype.mx_formats.config  # noqa: F401 - an enum registration that warns, imported by transformers
        except Exception:  # noqa: BLE001 - transformers imports it again and says why
            pass
