"""One benchmark measurement, run in its own process so that its peak memory is its own.

``python -m benchmarks.worker '{"subject": "resnet18", "engine": "cone", ...}'`` prints one
JSON line: wall time of :func:`quantlens.analyze`, peak resident memory (``ru_maxrss``) and
the result cells. With ``"pair": true`` it times the cone and the naive engine side by side
in this process (and, with ``"overhead": true``, the measured cost of every cone pass).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any, Callable

import torch

from benchmarks.procmem import peak_rss_mb

__all__ = ["SUBJECTS", "measure", "measure_pair", "cone_pass_cost"]


def _resnet18(p: dict) -> tuple[Any, Any, str]:
    from .data import SyntheticImages
    from .models import resnet18

    return resnet18(seed=0), SyntheticImages(p["images"], p["batch"], p.get("size", 224), seed=1), "kl"


def _effnet(p: dict) -> tuple[Any, Any, str]:
    from .data import photo_crops
    from .models import efficientnet_lite0

    return efficientnet_lite0(), photo_crops(p["images"], p["batch"], p.get("size", 224), seed=0), p.get("metric", "kl")


def _digits(p: dict) -> tuple[Any, Any, str]:
    from quantlens.demo import digits as demo

    return demo.model(), demo.data(), "top1"


def _minilm(p: dict) -> tuple[Any, Any, str]:
    from .data import docstring_batches
    from .models import minilm

    model, tokenizer = minilm()
    return model, docstring_batches(tokenizer, p["images"], p["batch"]), "cosine"


def _smollm(p: dict) -> tuple[Any, Any, str]:
    from quantlens.demo import smollm

    return smollm.model(), smollm.data(windows=p["images"], tokens=p["tokens"], batch=p["batch"]), "perplexity"


#: SmolLM2's 12 layers of quantlens issue 19: blocks 0, 15 and 29; q_proj, o_proj, gate_proj, down_proj.
SMOLLM_LAYERS = [f"model.layers.{b}.{m}" for b in (0, 15, 29)
                 for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")]

SUBJECTS: dict[str, Callable[[dict], tuple[Any, Any, str]]] = {
    "resnet18": _resnet18,
    "effnet-lite0": _effnet,
    "digits": _digits,
    "minilm": _minilm,
    "smollm": _smollm,
}


def cone_pass_cost(sweep: Any, data: Any, repeats: int = 3) -> float:
    """Sum over batches, layers and bit-widths of the median time of one cone pass alone."""
    from quantlens.data.batches import iterate

    total = 0.0
    with torch.inference_mode():
        for inputs, _ in iterate(data):
            _, cache = sweep.runner.float_pass(inputs.to(sweep.device))
            for i in sweep.layer_ids:
                for b in sweep.config.w_bits:
                    w = sweep.qweights[(i, b)].weight
                    times = []
                    for _ in range(repeats):
                        t0 = time.perf_counter()
                        sweep.runner.run(cache, i, w)
                        times.append(time.perf_counter() - t0)
                    total += statistics.median(times)
    return total


def _cells(r: Any) -> list:
    return [[c.layer, c.w_bits, c.noise, c.sqnr_db, c.metric, c.mean_shift] for c in r.cells]


def measure(p: dict) -> dict:
    """One engine through :func:`quantlens.analyze` (the real path): wall time and peak memory."""
    import quantlens as ql

    torch.set_num_threads(int(p.get("threads", torch.get_num_threads())))
    model, data, metric = SUBJECTS[p["subject"]](p)
    metric = p.get("metric", metric)
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    r = ql.analyze(model, data, w_bits=tuple(p["bits"]), a_bits=8, metric=metric, engine=p["engine"],
                   device=p.get("device", "cpu"))
    return {"params": p, "wall_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0,
            "baseline": r.baseline, "num_samples": r.num_samples, "cells": _cells(r)}


def measure_pair(p: dict) -> dict:
    """Cone and naive sweeps in this one process, batch by batch in turn, so that load from
    other processes hits both alike; each engine's time is its own setup, calibration and
    batches. Same pieces as :func:`quantlens.analyze` (``Sweep``, ``calibrate``, ``process_batch``)."""
    from quantlens.sweep.api import make_config
    from quantlens.data.batches import iterate
    from quantlens.engine.sweep import Sweep
    from quantlens.sweep.collect import collect

    torch.set_num_threads(int(p.get("threads", torch.get_num_threads())))
    model, data, metric = SUBJECTS[p["subject"]](p)
    metric = p.get("metric", metric)
    cfg = make_config(tuple(p["bits"]), 8)
    sample = next(iter(iterate(data)))
    times = {"cone": 0.0, "naive": 0.0}
    setup = {"cone": 0.0, "naive": 0.0}
    sweeps, states = {}, {}
    for eng in ("naive", "cone"):
        t0 = time.perf_counter()
        sweeps[eng] = Sweep(model, sample, cfg, metric, p.get("device", "cpu"), engine=eng, layers=p.get("layers"),
                            output_key=p.get("output_key"))
        sweeps[eng].calibrate(data)
        states[eng] = sweeps[eng].new_state()
        setup[eng] = time.perf_counter() - t0
        times[eng] += setup[eng]
    for k, batch in enumerate(iterate(data)):
        for eng in (("cone", "naive") if k % 2 == 0 else ("naive", "cone")):
            t0 = time.perf_counter()
            sweeps[eng].process_batch(states[eng], batch)
            times[eng] += time.perf_counter() - t0
    out: dict[str, Any] = {"params": p}
    batcher = getattr(sweeps["cone"].runner, "batcher", None)
    out["batched_layers"] = sum(m == "batched" for m in batcher.mode.values()) if batcher else 0
    for eng in ("cone", "naive"):
        r = collect(sweeps[eng], states[eng])
        out[eng] = {"wall_s": times[eng], "setup_s": setup[eng], "baseline": r.baseline, "num_samples": r.num_samples, "cells": _cells(r)}
    if p.get("overhead"):
        sw = sweeps["cone"]
        loops = []
        for _ in range(3):  # median of 3, like the cone passes it is compared with
            state = sw.new_state()
            t0 = time.perf_counter()
            for batch in iterate(data):
                sw.process_batch(state, batch)
            loops.append(time.perf_counter() - t0)
        out["loop_s"] = statistics.median(loops)
        out["cone_passes"] = len(sw.layer_ids) * len(cfg.w_bits) * states["cone"].batches
        out["cone_cost_s"] = cone_pass_cost(sw, data)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


if __name__ == "__main__":
    params = json.loads(sys.argv[1])
    print(json.dumps(measure_pair(params) if params.get("pair") else measure(params)))
