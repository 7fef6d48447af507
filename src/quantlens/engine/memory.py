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
do nothing. ``QUANTLENS_HEAP_TUNE=0`` keeps glibc's defaults; ``QUANTLENS_HEAP_TRIM_S`` sets the
interval (seconds, default 0.25; ``off`` never trims). Each trim gives back pages that the next
batch faults in again (system time): a longer interval trades resident memory for fewer faults.

Example:
    >>> trim_heap()
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from typing import Any, Optional

from quantlens.errors import QuantlensError

__all__ = ["available_bytes", "check_fits", "trim_heap", "trim_interval", "tune_heap", "TRIM_INTERVAL_S"]

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


TRIM_INTERVAL_S = 0.25


def trim_interval() -> float:
    """Seconds between two trims: ``QUANTLENS_HEAP_TRIM_S`` if set (``off``: never, ``inf``), else
    :data:`TRIM_INTERVAL_S`."""
    env = os.environ.get("QUANTLENS_HEAP_TRIM_S", "").strip().lower()
    if env == "":
        return TRIM_INTERVAL_S
    if env in ("off", "never", "none"):
        return float("inf")
    try:
        value = float(env)
    except ValueError:
        raise QuantlensError(f"QUANTLENS_HEAP_TRIM_S={env!r}: give seconds between heap trims (e.g. 0.25) or off") from None
    if value < 0 or value != value:
        raise QuantlensError(f"QUANTLENS_HEAP_TRIM_S={env!r}: give seconds between heap trims (e.g. 0.25) or off")
    return value


def trim_heap(min_interval: Optional[float] = None) -> bool:
    """Return free heap pages to the OS (glibc only; a no-op elsewhere), at most every
    ``min_interval`` s (default :func:`trim_interval`); True if it trimmed."""
    global _LAST
    lib = _libc()
    if lib is None:
        return False
    tune_heap()
    interval = trim_interval() if min_interval is None else min_interval
    if interval == float("inf"):
        return False
    now = time.monotonic()
    if now - _LAST >= interval:
        _LAST = now
        lib.malloc_trim(0)
        return True
    return False


def available_bytes() -> Optional[int]:
    """Memory a new allocation can still get without swapping: ``MemAvailable`` of
    ``/proc/meminfo`` (Linux), else None (unknown: no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_fits(fixed: int, per_sample: int, batch: int, what: str = "the sweep", tokens: int = 0,
               fixed_what: str = "quantized weights") -> None:
    """Refuse, before a run starts, one whose estimated need does not fit the available memory.

    ``need = fixed + batch x per_sample``: ``fixed`` what the run adds whatever the batch (quantized
    weights), ``per_sample`` what one sample of a batch keeps alive at the peak (measured by the
    caller). With ``tokens`` (the sequence length of a token model) the message counts tokens per
    batch too; ``fixed_what`` names ``fixed`` in the message (the estimate's gradient pass: weight
    gradients). The largest batch that fits is ``floor((available - fixed) / per_sample)``.
    """
    avail = available_bytes()
    if avail is None or per_sample <= 0 or batch <= 0:
        return
    need = fixed + batch * per_sample
    if need <= avail:
        return
    fit = max(0, (avail - fixed) // per_sample)
    unit = f" ({batch * tokens} tokens)" if tokens else ""
    fits = (f"at most {fit} sample(s) per batch{f' ({fit * tokens} tokens)' if tokens else ''} fit"
            if fit else "not even one sample per batch fits")
    raise QuantlensError(
        f"{what} needs about {_gb(need)} of memory at {batch} sample(s) per batch{unit} ({_gb(fixed)} of {fixed_what} "
        f"+ {_gb(per_sample)} per sample), but {_gb(avail)} is available: {fits}; use smaller batches"
        + (" or shorter sequences" if tokens else "") + ", fewer layers (--layers) or fewer formats"
    )
