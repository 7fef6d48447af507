"""``python -m benchmarks.smollm_memory``: peak memory and system time of SmolLM2-135M runs.

Runs one of the issue-19 workloads in this process and prints one line: peak resident memory
(``VmHWM``), user and system CPU time (``getrusage``; system as a share of CPU time), wall time,
and a digest of every cell (so two revisions can be checked for identical numbers)::

    python -m benchmarks.smollm_memory estimate --windows 32 --tokens 256
    python -m benchmarks.smollm_memory exact --windows 32 --tokens 256 --layers six --bits 4

``estimate``: ``--estimate --w-bits 4,8 --granularity per-group-128 --a-bits none --metric
perplexity`` over every layer; ``exact``: the exact sweep (same settings) of ``--layers``: ``six``
is blocks 0, 15, 29 x q_proj, down_proj; ``12`` is blocks 0, 15, 29 x q_proj, o_proj, gate_proj,
down_proj; ``all`` is every layer; a number ``n`` the first ``n`` layers. ``--bits 4`` (or ``4,8``:
the default) are the integer weight bit-widths, ``--batch`` the windows per batch (tokens per batch:
``batch x tokens``). Runs at more than 8 windows x 128 tokens belong under ``flock /tmp/bigmem.lock``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import time
import warnings

import torch

from benchmarks.procmem import status_mb

SIX = [f"model.layers.{b}.{r}" for b in (0, 15, 29) for r in ("self_attn.q_proj", "mlp.down_proj")]
TWELVE = [f"model.layers.{b}.{r}" for b in (0, 15, 29)
          for r in ("self_attn.q_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj")]


def trace_phases() -> None:
    """Print resident memory entering and leaving each phase of ``analyze`` and its peak inside
    (a 50 ms ``VmRSS`` sampler): capture, cones, the sweep's preparation, each batch, the estimate."""
    import functools
    import threading

    from quantlens.engine import runner, sweep
    from quantlens.sweep import estimate

    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], status_mb("VmRSS"))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()
    need = getattr(estimate, "gradient_pass_bytes", None)  # absent before the check counted the gradient pass

    def shown(*a, **k):
        fixed, per_sample, samples = out = need(*a, **k)
        print(f"  gradient pass predicted: {fixed / 2**20:.0f} MB of weight gradients + {samples} x {per_sample / 2**20:.0f} MB "
              f"per sample (check_fits)", flush=True)
        return out

    if need is not None:
        estimate.gradient_pass_bytes = shown
    for owner, qual in ((sweep, "capture"), (runner, "ConeRunner.__init__"), (sweep, "Sweep.__init__"),
                        (sweep, "Sweep.calibrate"), (sweep, "Sweep.process_batch"), (estimate, "timed_first_order"),
                        (estimate, "measure")):
        *path, name = qual.split(".")
        obj = owner
        for p in path:
            obj = getattr(obj, p)
        fn = getattr(obj, name)

        def wrapped(*a, _fn=fn, _qual=qual, **k):
            peak[0] = before = status_mb("VmRSS")
            t = time.perf_counter()
            out = _fn(*a, **k)
            print(f"  {_qual:24s} RSS {before:6.0f} -> {status_mb('VmRSS'):6.0f} MB, peak inside {peak[0]:6.0f} MB, "
                  f"{time.perf_counter() - t:6.1f} s", flush=True)
            return out

        setattr(obj, name, functools.wraps(fn)(wrapped))


def _micro() -> int:
    from quantlens.sweep import estimate

    return getattr(estimate, "MICRO_TOKENS", 0)


def digest(result) -> str:
    """Hash of every cell's numbers (repr of floats: equal digests mean bitwise-equal cells)."""
    rows = [(c.layer, c.format, repr(c.noise), repr(c.metric), repr(c.estimate), repr(c.sqnr_db)) for c in result.cells]
    return hashlib.sha256(json.dumps([repr(result.baseline)] + rows).encode()).hexdigest()[:16]


def estimates_digest(result) -> str:
    """Hash of every cell's estimate alone: independent of which cells the check measured (its
    choice depends on the measured times, so the full :func:`digest` of two runs can differ)."""
    return hashlib.sha256(json.dumps([(c.layer, c.format, repr(c.estimate)) for c in result.cells]).encode()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["estimate", "exact"])
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--layers", default="12", help="exact: six, 12, all, or a number n of the first n layers")
    ap.add_argument("--bits", default="4,8", help="integer weight bit-widths, comma-separated")
    ap.add_argument("--batch", type=int, default=4, help="windows per batch")
    ap.add_argument("--engine", default="cone")
    ap.add_argument("--json", default=None, help="write the result's cells here")
    ap.add_argument("--phases", action="store_true", help="print resident memory per phase of analyze")
    ap.add_argument("--micro-tokens", type=int, default=None,
                    help="estimate: tokens per backward (quantlens.sweep.estimate.MICRO_TOKENS; 0: whole batches)")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    if args.micro_tokens is not None:
        from quantlens.sweep import estimate as _est

        _est.MICRO_TOKENS = args.micro_tokens or 1 << 40
    if args.phases:
        trace_phases()
    import quantlens as ql
    from quantlens.demo import smollm

    model = smollm.model()
    data = smollm.data(windows=args.windows, tokens=args.tokens, batch=args.batch)
    bits = tuple(int(b) for b in args.bits.split(","))
    loaded = status_mb("VmRSS")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if args.what == "estimate" or args.layers == "all":
        layers = None
    elif args.layers == "six":
        layers = SIX
    elif args.layers == "12":
        layers = TWELVE
    else:
        layers = names[: int(args.layers)]
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    result = ql.analyze(model, data, method="estimate" if args.what == "estimate" else "exact", w_bits=bits,
                        granularity="per-group-128", a_bits=None, metric="perplexity", output_key="logits",
                        layers=layers, engine=args.engine)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    user, system = r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime
    if args.json:
        result.to_json(args.json)
    print(f"{args.what} {args.windows}x{args.tokens} batch={args.batch} bits={args.bits} layers={args.layers if args.what == 'exact' else 'all'} "
          f"engine={args.engine} micro_tokens={_micro()}: peak RSS {status_mb('VmHWM'):.0f} MB (model loaded: {loaded:.0f} MB) | wall {wall:.1f} s | "
          f"user {user:.1f} s, system {system:.1f} s = {100 * system / max(user + system, 1e-9):.0f}% of CPU | "
          f"cells {len(result.cells)} digest {digest(result)} estimates {estimates_digest(result)}", flush=True)


if __name__ == "__main__":
    main()
