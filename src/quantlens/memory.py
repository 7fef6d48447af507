"""Give freed memory back to the operating system between batches.

Each batch allocates and frees hundreds of megabytes of activations. glibc keeps freed
blocks below its (adaptive, up to 32 MB) mmap threshold in the heap, so resident memory can
creep up over many batches although nothing is kept. :func:`trim_heap` calls glibc's
``malloc_trim(0)`` (a few milliseconds), which returns those pages; elsewhere it does nothing.

Example:
    >>> trim_heap()
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Optional

__all__ = ["trim_heap"]

_TRIM: Optional[Any] = None
_LOADED = False


def trim_heap() -> None:
    """Return free heap pages to the OS (glibc only; a no-op elsewhere)."""
    global _TRIM, _LOADED
    if not _LOADED:
        _LOADED = True
        if sys.platform.startswith("linux"):
            try:
                _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                _TRIM = None
    if _TRIM is not None:
        _TRIM(0)
