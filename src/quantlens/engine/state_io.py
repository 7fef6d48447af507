"""Plain-data forms of a sweep's progress: accumulator states and calibrated quantizers.

What a checkpoint or a remote worker needs to continue a :class:`~quantlens.engine.sweep.Sweep`
elsewhere: :func:`state_from_dict` inverts :meth:`SweepState.to_dict`, and
:func:`calibration_to_dict` / :func:`load_calibration` carry the activation quantizers'
parameters (scale, zero point, grid) so that calibration runs once.

Example:
    >>> d = state.to_dict()                                   # doctest: +SKIP
    >>> state_from_dict(sweep, d).to_dict() == d              # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import Any

import torch

from quantlens.metrics.task import make_metric
from quantlens.quant.observers import MinMaxObserver
from quantlens.engine.accumulate import CellAccumulator, ChannelStats

__all__ = ["state_from_dict", "calibration_to_dict", "load_calibration", "union_states"]


def state_from_dict(sweep: Any, d: dict) -> Any:
    """A :class:`SweepState` of ``sweep`` from :meth:`SweepState.to_dict` output."""
    from quantlens.engine.state import SweepState

    cells = {}
    for i, b, s in d["cells"]:
        acc = CellAccumulator(make_metric(sweep.metric_spec))
        acc.load_state(s)
        cells[(int(i), b if isinstance(b, str) else int(b))] = acc
    baseline = make_metric(sweep.metric_spec)
    baseline.load_state(d["baseline"])
    channels = {}
    for i, s in d["channels"].items():
        c = ChannelStats()
        c.load_state(s)
        channels[int(i)] = c
    return SweepState(
        cells=cells,
        baseline=baseline,
        channels=channels,
        in_range={int(i): MinMaxObserver.from_dict(o) for i, o in d["in_range"].items()},
        out_range={int(i): MinMaxObserver.from_dict(o) for i, o in d["out_range"].items()},
        num_samples=int(d["num_samples"]),
        batches=int(d["batches"]),
    )


def union_states(states: list[Any]) -> Any:
    """Join states over disjoint layer groups that each saw the same data.

    Cells and per-layer statistics are united; the baseline and sample counts, which every
    group measured on the same data, are taken once (from the first state).
    """
    from quantlens.engine.state import SweepState

    first = states[0]
    out = SweepState(dict(first.cells), first.baseline, dict(first.channels), dict(first.in_range),
                     dict(first.out_range), first.num_samples, first.batches)
    for s in states[1:]:
        if s.num_samples != first.num_samples:
            raise RuntimeError(f"layer groups saw different data: {s.num_samples} vs {first.num_samples} samples")
        for name in ("cells", "channels", "in_range", "out_range"):
            mine, theirs = getattr(out, name), getattr(s, name)
            overlap = set(mine) & set(theirs)
            if overlap:
                raise RuntimeError(f"layer groups overlap in {name}: {sorted(overlap)[:3]}")
            mine.update(theirs)
    return out


def _quantizer_dict(q: Any) -> dict:
    return {
        "enabled": bool(q.enabled),
        "scale": float(q.scale),
        "zero_point": int(q.zero_point),
        "qmin": int(q.qmin),
        "qmax": int(q.qmax),
        "format": q.format,
        "axis": int(q.axis),
    }


def calibration_to_dict(sweep: Any) -> dict:
    """Each swept layer's input and output quantizer parameters."""
    r = sweep.runner
    return {str(i): {"in": _quantizer_dict(r.in_q[i]), "out": _quantizer_dict(r.out_q[i])} for i in sweep.layer_ids}


def _load_quantizer(q: Any, d: dict) -> None:
    q.scale = torch.tensor(d["scale"], dtype=torch.float32, device=q.scale.device)
    q.zero_point = torch.tensor(d["zero_point"], dtype=torch.int32, device=q.zero_point.device)
    q.qmin, q.qmax, q.enabled = int(d["qmin"]), int(d["qmax"]), bool(d["enabled"])
    q.format, q.axis = d.get("format"), int(d.get("axis", -1))


def load_calibration(sweep: Any, d: dict) -> None:
    """Set the quantizers of ``sweep`` from :func:`calibration_to_dict` output."""
    r = sweep.runner
    for i in sweep.layer_ids:
        _load_quantizer(r.in_q[i], d[str(i)]["in"])
        _load_quantizer(r.out_q[i], d[str(i)]["out"])
