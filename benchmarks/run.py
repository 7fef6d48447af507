"""``python -m benchmarks.run [--quick] [--only NAMES] [--json PATH]``: quantlens vs the naive loop.

For each subject, on the same data and in one process, times quantlens's cone sweep and
the naive loop (a full forward pass per layer and bit-width, same quantization, same
numbers), batch by batch in turn so that load from other processes hits both alike; checks
that both give the same cells (1e-5 relative) and prints wall times, the ratio naive /
quantlens and the FLOP bound of that ratio. Memory is measured through
:func:`quantlens.analyze` in fresh processes (peak resident memory, ``VmHWM``): the
ResNet-18 3..8 sweep, and N vs 10 N images (streaming). On the digits demo it also prints
the sweep's batch loop time over the measured cost of its cone passes (bookkeeping). The ``fix``
subject times ``quantlens fix``'s loop on EfficientNet-Lite0 (real weights, real photos) at 6 bits
in this checkout and in an older revision (``--fix-before``), each in a fresh process on the same
data, with wall, user and system CPU time, and checks that both give the same numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any

__all__ = ["main", "plan", "compare"]


def plan(quick: bool) -> dict[str, dict]:
    """Parameters of each subject, full or ``--quick``."""
    if quick:
        return {
            "resnet18": {"images": 8, "batch": 8, "bits": [4, 8], "size": 224},
            "effnet-lite0": {"images": 8, "batch": 8, "bits": [4], "size": 224},
            "digits": {"bits": [3, 4, 5, 6, 7, 8]},
            "minilm": {"images": 16, "batch": 8, "bits": [4]},
            "memory": {"images": [16, 160], "batch": 8, "bits": [8], "full_bits": [4, 8], "size": 112},
            "fix": {"images": 8, "batch": 8, "bits": 6, "size": 224},
            "smollm": {"images": 1, "tokens": 64, "batch": 1, "bits": [4], "layers": _smollm_layers(), "output_key": "logits"},
        }
    return {
        "resnet18": {"images": 64, "batch": 32, "bits": [3, 4, 5, 6, 7, 8], "size": 224},
        "effnet-lite0": {"images": 16, "batch": 16, "bits": [4, 6, 8], "size": 224},
        "digits": {"bits": [3, 4, 5, 6, 7, 8]},
        "minilm": {"images": 64, "batch": 16, "bits": [4, 6, 8]},
        "memory": {"images": [64, 640], "batch": 32, "bits": [8], "full_bits": [3, 4, 5, 6, 7, 8], "size": 224},
        "fix": {"images": 16, "batch": 16, "bits": 6, "size": 224},
        "smollm": {"images": 4, "tokens": 128, "batch": 2, "bits": [4], "layers": _smollm_layers(), "output_key": "logits"},
    }


def _smollm_layers() -> list[str]:
    from .worker import SMOLLM_LAYERS

    return list(SMOLLM_LAYERS)


def _worker(params: dict) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.worker", json.dumps(params)]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"worker failed ({params}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _rel(a: float, b: float) -> float:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a) and math.isnan(b)):
        return 0.0
    if math.isinf(a) or math.isinf(b):
        return 0.0 if a == b else math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def compare(a: dict, b: dict) -> float:
    """Largest relative difference between two runs' cells (noise, SQNR, metric, mean shift)."""
    worst = 0.0
    cb = {(c[0], c[1]): c for c in b["cells"]}
    for c in a["cells"]:
        d = cb[(c[0], c[1])]
        for k in (2, 3, 5):
            worst = max(worst, _rel(c[k], d[k]))
        worst = max(worst, abs(c[4] - d[4]) if abs(c[4] - d[4]) > 1e-9 else 0.0)
    return worst


def _bound(subject: str, size: int, p: Any = None) -> dict:
    from .flops import cone_fraction
    from .worker import SUBJECTS

    if subject == "smollm":  # the selected layers' cones, on the benchmark's own first batch
        from quantlens.data.batches import iterate

        model, data, _ = SUBJECTS[subject](p)
        return cone_fraction(model, next(iter(iterate(data)))[0], layers=p["layers"])
    model, data, _ = SUBJECTS[subject]({"images": 8, "batch": 8, "size": size})
    if subject == "minilm":
        from quantlens.data.batches import iterate

        return cone_fraction(model, next(iter(iterate(data)))[0])
    shape = (1, 1, 8, 8) if subject == "digits" else (1, 3, size, size)
    return cone_fraction(model, shape)


def _line(text: str = "") -> None:
    print(text, flush=True)


def run_pair(subject: str, p: dict, overhead: bool = False) -> dict:
    """Cone and naive side by side in one process, on the same data; both results compared."""
    m = _worker({"subject": subject, **p, "pair": True, "overhead": overhead})
    cone, naive = m["cone"], m["naive"]
    bound = _bound(subject, p.get("size", 224), p)
    ratio = naive["wall_s"] / cone["wall_s"]
    loop = (naive["wall_s"] - naive["setup_s"]) / max(cone["wall_s"] - cone["setup_s"], 1e-9)
    layers = len({c[0] for c in cone["cells"]})
    res = {**m, "ratio": ratio, "loop_ratio": loop, "bound": bound["bound"], "max_rel_diff": compare(cone, naive)}
    unit = {"minilm": "texts", "smollm": "windows"}.get(subject, "images")
    _line(
        f"{subject:13s} {layers:3d} layers x {len(p['bits'])} bits, {cone['num_samples']:4d} {unit} | "
        f"naive {naive['wall_s']:7.1f} s  quantlens {cone['wall_s']:7.1f} s  ratio {ratio:4.2f}x "
        f"(FLOP bound {bound['bound']:.2f}x; ratio = {100 * ratio / bound['bound']:.0f}% of the bound) | "
        f"max rel diff {res['max_rel_diff']:.1e} ({'equal' if res['max_rel_diff'] <= 1e-5 else 'DIFFERENT'} to 1e-5) | "
        f"{m.get('batched_layers', 0)}/{layers} layers batch their bit-widths"
    )
    _line(
        f"{'':13s} batches only (capture and calibration left out: cone {cone['setup_s']:.1f} s, naive {naive['setup_s']:.1f} s): "
        f"naive {naive['wall_s'] - naive['setup_s']:.1f} s  quantlens {cone['wall_s'] - cone['setup_s']:.1f} s  ratio {loop:.2f}x "
        f"= {100 * loop / bound['bound']:.0f}% of the bound"
    )
    if overhead:
        _line(
            f"{'':13s} overhead: {m['cone_passes']} cone passes cost {m['cone_cost_s']:.2f} s measured alone; the "
            f"sweep's batch loop took {m['loop_s']:.2f} s (median of 3) = {m['loop_s'] / m['cone_cost_s']:.2f}x (target <= 1.3x)"
        )
    return res


def _single(n: int, p: dict, bits: list) -> dict:
    return _worker({"subject": "resnet18", "engine": "cone", "images": n, "batch": p["batch"], "bits": bits,
                    "size": p["size"]})


def run_memory(p: dict) -> dict:
    """Peak RSS of :func:`quantlens.analyze` on ResNet-18: the full sweep, and N vs 10 N images."""
    full = _single(p["images"][0], p, p["full_bits"])
    _line(
        f"{'memory':13s} ResNet-18 {p['size']}x{p['size']}, {p['images'][0]} images, bits {p['full_bits']}: peak RSS "
        f"{full['peak_rss_mb']:.0f} MB (target < 2048 MB; {full['rss_before_mb']:.0f} MB before the sweep; "
        f"{full['wall_s']:.0f} s through quantlens.analyze)"
    )
    small, large = (_single(n, p, p["bits"]) for n in p["images"])
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    _line(
        f"{'streaming':13s} ResNet-18 {p['size']}x{p['size']}, bits {p['bits']}: peak RSS {p['images'][0]} images "
        f"{small['peak_rss_mb']:.0f} MB, {p['images'][1]} images {large['peak_rss_mb']:.0f} MB -> {ratio:.2f}x "
        f"(target <= 1.2x; {small['wall_s']:.0f} s / {large['wall_s']:.0f} s)"
    )
    return {"full": full, "small": small, "large": large, "ratio": ratio}


def _fix_worker(params: dict, src: str) -> dict:
    """:mod:`benchmarks.fixbench` in a fresh process with ``src`` first on ``PYTHONPATH``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, root])}
    p = subprocess.run([sys.executable, "-m", "benchmarks.fixbench", json.dumps(params)], cwd=root, env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"fix worker failed ({src}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _checkout(rev: str) -> str:
    """``src/`` of git revision ``rev`` of this repository, extracted into a temporary directory."""
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    d = tempfile.mkdtemp(prefix="quantlens-before-")
    archive = subprocess.run(["git", "archive", rev, "src"], cwd=root, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", d], input=archive, check=True)
    return os.path.join(d, "src")


def _fix_diff(a: dict, b: dict, ignore: tuple = ("percentile",)) -> float:
    """Largest relative difference between two fix runs' trials and Table 1 rows (inf if they differ
    in kind). Trials of the fixes in ``ignore`` and rows that used them are left out: the
    ``percentile`` fix's default changed from 99.0 to 99.99 with the trial runner, by design."""
    if a["culprits"] != b["culprits"]:
        return math.inf
    ta = [t for t in a["trials"] if t[1] not in ignore]
    tb = [t for t in b["trials"] if t[1] not in ignore]
    if [t[:2] for t in ta] != [t[:2] for t in tb]:
        return math.inf
    worst = 0.0
    for x, y in zip(ta, tb):
        worst = max(worst, _rel(x[2], y[2]), _rel(x[3], y[3]))
    ra = {r[0]: r for r in a["rows"] if not any(f in r[0] for f in ignore)}
    rb = {r[0]: r for r in b["rows"] if not any(f in r[0] for f in ignore)}
    for m in set(ra) & set(rb):
        if m == "local" and (a.get("local_fixes") != b.get("local_fixes")):
            continue  # a different choice (the percentile trial changed): not comparable
        worst = max(worst, *(_rel(u, v) for u, v in zip(ra[m][1:], rb[m][1:])))
    return worst


def run_fix(p: dict, before: str, after: str = "") -> dict:
    """``quantlens fix``'s loop on EfficientNet-Lite0: revision ``before`` against ``after`` (default:
    this checkout's ``src``), same data, each in a fresh process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    old = _fix_worker(p, _checkout(before))
    new = _fix_worker(p, _checkout(after) if after else os.path.join(root, "src"))
    diff = _fix_diff(old, new)

    def cpu(m: dict) -> str:
        total = m["user_s"] + m["sys_s"]
        return (f"wall {m['wall_s']:6.1f} s, CPU {total:6.1f} s (user {m['user_s']:.1f}, system {m['sys_s']:.1f} = "
                f"{100 * m['sys_s'] / max(total, 1e-9):.0f}%)")

    _line(f"{'fix':13s} EfficientNet-Lite0, {p['images']} photos, {p['bits']}-bit weights, {len(new['trials'])} trials + "
          f"{len(new['rows'])} rows | before ({before}) {cpu(old)} | after {cpu(new)} | "
          f"{old['wall_s'] / new['wall_s']:.1f}x faster | max rel diff {diff:.1e} ({'same numbers' if diff <= 1e-6 else 'DIFFERENT'}; percentile trials left out: default 99.0 -> 99.99)")
    return {"before": old, "after": new, "ratio": old["wall_s"] / new["wall_s"], "max_rel_diff": diff, "before_rev": before}


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer images and bit-widths: a check in about a minute")
    ap.add_argument("--only", default="resnet18,effnet-lite0,digits,minilm,memory,fix,smollm", help="comma-separated subjects")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write every measurement as JSON")
    ap.add_argument("--fix-before", default="8a6a9b5", metavar="REV",
                    help="git revision whose fix loop the `fix` subject times against this checkout (default: 8a6a9b5, before the trial runner)")
    ap.add_argument("--fix-after", default="", metavar="REV", help="time this git revision's fix loop instead of the checkout's src/")
    args = ap.parse_args(argv)
    import torch

    cfg = plan(args.quick)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    _line(f"quantlens benchmarks ({'quick' if args.quick else 'full'}): torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs; engines side by side in one process, memory in fresh ones")
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    for name in only:
        if name == "memory":
            out[name] = run_memory(cfg["memory"])
        elif name == "fix":
            out[name] = run_fix(cfg["fix"], args.fix_before, args.fix_after)
        else:
            out[name] = run_pair(name, cfg[name], overhead=(name == "digits"))
    _line(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
