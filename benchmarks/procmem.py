"""This process's resident memory from ``/proc/self/status``, in MB (the benchmarks' one reader).

``VmRSS`` is resident now, ``VmHWM`` its peak (``ru_maxrss`` would include the parent's memory at
fork, which Linux carries across ``execve``).
"""

from __future__ import annotations

import resource

__all__ = ["peak_rss_mb", "status_mb"]


def status_mb(key: str) -> float:
    """The ``/proc/self/status`` field ``key`` (``VmRSS``, ``VmHWM``) in MB; NaN where there is none."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:  # pragma: no cover - not Linux
        pass
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident memory (``VmHWM``; ``ru_maxrss`` where /proc has none)."""
    peak = status_mb("VmHWM")
    return peak if peak == peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
