"""Keep resident memory at one batch's without paying the kernel for every tensor.

Each batch allocates and frees hundreds of megabytes of activations. By default glibc serves
every allocation above its mmap threshold (adaptive, at most 32 MB) with a fresh ``mmap`` and
returns it with ``munmap`` when freed, and trims the top of the heap whenever more than 128 kB
is free there: every large activation then costs page faults and zeroing in the kernel, which
showed as a third of the CPU time of ``quantlens fix`` (system time). :func:`tune_heap` (called
once, by the first :func:`trim_heap`) raises both thresholds (``mallopt``), so freed blocks are
reused from the heap; :func:`trim_heap` gives the free pages back (``malloc_trim(0)``) between
batches, at most once per ``min_interval`` seconds, so resident memory does not creep up over
many batches although the heap is no longer trimmed on every free. Elsewhere than glibc both
do nothing. ``QUANTLENS_HEAP_TUNE=0`` keeps glibc's defaults.

Example:
    >>> trim_heap()
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import Any, Optional

__all__ = ["trim_heap", "tune_heap"]

_LIBC: Optional[Any] = None
_LOADED = False
_TUNED = False
_LAST = float("-inf")
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # larger than any activation: every tensor comes from the heap
_TRIM_THRESHOLD = 1 << 30


def _libc() -> Optional[Any]:
    global _LIBC, _LOADED
    if not _LOADED:
        _LOADED = True
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL("libc.so.6")
                lib.malloc_trim, lib.mallopt  # noqa: B018 - both must exist (glibc)
                _LIBC = lib
            except (OSError, AttributeError):
                _LIBC = None
    return _LIBC


def tune_heap() -> bool:
    """Raise glibc's mmap and trim thresholds once (see module docstring); True if done."""
    global _TUNED
    lib = _libc()
    if _TUNED or lib is None or os.environ.get("QUANTLENS_HEAP_TUNE", "1") == "0":
        return _TUNED
    _TUNED = bool(lib.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(lib.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _TUNED


def trim_heap(min_interval: float = 0.25) -> None:
    """Return free heap pages to the OS (glibc only; a no-op elsewhere), at most every ``min_interval`` s."""
    global _LAST
    lib = _libc()
    if lib is None:
        return
    tune_heap()
    now = time.monotonic()
    if now - _LAST >= min_interval:
        _LAST = now
        lib.malloc_trim(0)
