"""Give freed memory back to the operating system between batches.

Each batch allocates and frees hundreds of megabytes of activations. glibc keeps freed
blocks below its (adaptive, up to 32 MB) mmap threshold in the heap, so resident memory can
creep up over many batches although nothing is kept. :func:`trim_heap` calls glibc's
``malloc_trim(0)`` (about a millisecond), which returns those pages; elsewhere it does nothing.
It runs at most once per ``min_interval`` seconds, so sweeps of many small, fast batches do not
pay for it on every batch (their batches hold little memory anyway).

Example:
    >>> trim_heap()
"""

from __future__ import annotations

import ctypes
import sys
import time
from typing import Any, Optional

__all__ = ["trim_heap"]

_TRIM: Optional[Any] = None
_LOADED = False
_LAST = float("-inf")


def trim_heap(min_interval: float = 0.25) -> None:
    """Return free heap pages to the OS (glibc only; a no-op elsewhere), at most every ``min_interval`` s."""
    global _TRIM, _LOADED, _LAST
    if not _LOADED:
        _LOADED = True
        if sys.platform.startswith("linux"):
            try:
                _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                _TRIM = None
    now = time.monotonic()
    if _TRIM is not None and now - _LAST >= min_interval:
        _LAST = now
        _TRIM(0)
