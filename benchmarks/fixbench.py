"""Time ``quantlens fix``'s loop (:func:`quantlens.experiments.fixloop.fix_loop`) on EfficientNet-Lite0.

``python -m benchmarks.fixbench '{"images": 16, "batch": 16, "bits": 6}'`` prints one JSON line:
wall time, user and system CPU time (``getrusage``) of the fix loop alone (the sweep it reads is
run first and not counted), and the numbers it produced (culprits, trials, Table 1 rows), so
that two versions of quantlens can be compared on the same data. Run it with ``PYTHONPATH``
pointing at another checkout's ``src`` to time that version (``benchmarks.run --only fix`` does).
"""

from __future__ import annotations

import json
import resource
import sys
import time

__all__ = ["measure_fix"]


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _fix_loop(model: object, data: object, sweep: object, bits: int, metric: str, top: int) -> object:
    """The fix loop of whichever quantlens is on the path: this layout (a Workload) or an older
    revision's (``quantlens.analysis.fixloop``, plain keywords), which ``benchmarks.run`` times."""
    try:
        from quantlens.experiments.fixloop import fix_loop
        from quantlens.core.workload import Workload
    except ImportError:
        from quantlens.analysis.fixloop import fix_loop  # type: ignore[no-redef]

        return fix_loop(model, data, sweep, w_bits=bits, a_bits=8, metric=metric, top=top)[0]
    return fix_loop(Workload(model, data, metric=metric), sweep, w_bits=bits, top=top)[0]


def measure_fix(p: dict) -> dict:
    """Sweep at ``bits`` (not timed), then the fix loop (timed: wall, user, system)."""
    import torch

    import quantlens as ql

    from .worker import SUBJECTS

    torch.manual_seed(0)
    model, data, metric = SUBJECTS["effnet-lite0"]({"images": p["images"], "batch": p["batch"], "size": p.get("size", 224),
                                                    "metric": p.get("metric", "kl")})
    bits = int(p.get("bits", 6))
    sweep = ql.analyze(model, data, w_bits=[bits], a_bits=8, metric=metric)
    u0, s0 = _cpu()
    t0 = time.perf_counter()
    result = _fix_loop(model, data, sweep, bits, metric, int(p.get("top", 3)))
    wall = time.perf_counter() - t0
    u1, s1 = _cpu()
    return {
        "wall_s": wall,
        "user_s": u1 - u0,
        "sys_s": s1 - s0,
        "culprits": list(result.culprits),
        "trials": [[t.layer, t.fix, t.degradation, t.noise, t.kept] for t in result.trials],
        "rows": [[r.method, r.metric, r.degradation, r.noise] for r in result.rows],
        "local_fixes": {k: list(v) for k, v in result.local_fixes.items()},
    }


if __name__ == "__main__":
    print(json.dumps(measure_fix(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {"images": 16, "batch": 16})))
