"""``python -m benchmarks.smollm_peer``: quantlens's sibling-group sweep beside NVIDIA ModelOpt's
``auto_quantize(method="kl_div")`` on SmolLM2-135M, same data, same groups, FP8 weights.

Both sides score each group of layers that read one tensor (q/k/v, gate/up; every other Linear
alone: 121 groups on SmolLM2) with its weights in FP8 E4M3, one per-tensor scale ``amax / 448``
(the same grid on both, see docs/formats.md), activations float, every other layer float:

* ModelOpt: ``mtq.auto_quantize(model, quantization_formats=[FP8 weights only], method="kl_div")``,
  whose score per group is ``sum_t KL(p_t || q_t)`` over every token of the scored batches
  (one full forward pass per group and format);
* quantlens: ``analyze_siblings`` with ``formats=("fp8-e4m3",)``, ``a_bits=None``, metric
  ``token_kl`` (``mean_t KL(p_t || q_t)``, so ``score = token_kl x tokens``), with its 95% interval.

Each side runs in its own fresh process (wall and CPU seconds of the scoring call, peak resident
memory ``VmHWM``; ``QL_THREADS=1`` makes the CPU time the work done on a loaded machine); the parent
compares the two scores (Spearman's rho) and counts the pairs of groups that quantlens's
intervals separate. ModelOpt: ``pip install -c constraints.txt nvidia-modelopt``.

Example:
    python -m benchmarks.smollm_peer --windows 2 --tokens 128 --json peer.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
import warnings
from typing import Any

from benchmarks.procmem import peak_rss_mb

from quantlens.sweep.estimate import spearman  # the estimate's check uses the same rank correlation (ties: mean ranks)

__all__ = ["compare", "main", "run_modelopt", "run_quantlens", "spearman"]


def _cpu() -> float:
    """This process's CPU seconds, user + system: the work done, whatever else runs on the machine."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _data(windows: int, tokens: int) -> list:
    from quantlens.demo import smollm

    return smollm.data(windows=windows, tokens=tokens, batch=windows)


def run_modelopt(windows: int, tokens: int) -> dict:
    """ModelOpt's KL score per group (FP8 weights, per tensor, max calibration; inputs float)."""
    import torch

    warnings.simplefilter("ignore")
    import modelopt.torch.quantization as mtq

    from quantlens.demo import smollm

    data = _data(windows, tokens)
    model = copy.deepcopy(smollm.model())  # auto_quantize replaces the Linears in place
    cfg = copy.deepcopy(mtq.FP8_DEFAULT_CFG)
    cfg["quant_cfg"] = [e for e in cfg["quant_cfg"] if e.get("quantizer_name") != "*input_quantizer"]
    cfg["quant_cfg"] = [e for e in cfg["quant_cfg"] if e.get("quantizer_name") != "*lm_head*"]  # searched, like ours

    def forward_step(m: Any, batch: dict) -> Any:
        return m(**batch).logits

    rss0 = peak_rss_mb()
    t0, c0 = time.perf_counter(), _cpu()
    with torch.inference_mode(False):
        _, state = mtq.auto_quantize(model, constraints={"effective_bits": 12.0}, quantization_formats=[cfg], data_loader=data,
                                     forward_step=forward_step, num_calib_steps=len(data), num_score_steps=len(data),
                                     method="kl_div", verbose=False)
    wall = time.perf_counter() - t0
    from modelopt.torch.opt.utils import named_hparams
    from modelopt.torch.quantization.algorithms import QuantRecipe, QuantRecipeHparam

    # the raw KL sum of each group's FP8 recipe (candidate_stats clips it by the no-quant score)
    scores, members = {}, {}
    for name, hp in named_hparams(model, unique=True):
        if not isinstance(hp, QuantRecipeHparam):
            continue
        q = [r for r in hp.choices if r != QuantRecipe(quant_cfg=None)]
        scores[name] = float(hp.get_score(q[0])) if q else float("nan")
        members[name] = list(hp.quant_module_names)
    return {"side": "modelopt", "wall_s": wall, "cpu_s": _cpu() - c0, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0, "scores": scores,
            "members": members, "groups": len(state["candidate_stats"])}


def run_quantlens(windows: int, tokens: int) -> dict:
    """quantlens's sibling sweep: ``token_kl`` per group with its interval."""
    warnings.simplefilter("ignore")
    import quantlens as ql
    from quantlens.demo import smollm
    from quantlens.experiments.group_sweep import analyze_siblings, group_members

    data = _data(windows, tokens)
    model = smollm.model()
    rss0 = peak_rss_mb()
    t0, c0 = time.perf_counter(), _cpu()
    r = analyze_siblings(ql.Workload(model, data, metric="token_kl", output_key="logits"),
                         config=ql.SweepConfig(w_bits=(), a_bits=None, formats=("fp8-e4m3",)))
    wall = time.perf_counter() - t0
    n_tokens = windows * tokens
    cells = {c.layer: {"token_kl": c.metric, "score": c.metric * n_tokens, "ci_low": c.ci_low * n_tokens,
                       "ci_high": c.ci_high * n_tokens} for c in r.cells}
    return {"side": "quantlens", "wall_s": wall, "cpu_s": _cpu() - c0, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": rss0, "cells": cells,
            "members": group_members(r)}


def compare(peer: dict, ours: dict) -> dict:
    """Match groups by their members, then Spearman between the scores and the pairs of groups
    whose quantlens intervals do not overlap (and whether ModelOpt orders those pairs the same way)."""
    by_members = {tuple(sorted(m)): g for g, m in ours["members"].items()}
    pairs = []
    for name, score in peer["scores"].items():
        g = by_members.get(tuple(sorted(peer["members"].get(name, []))))
        if g is not None:
            pairs.append((name, g, score))
    qs = [ours["cells"][g]["score"] for _, g, _ in pairs]
    ps = [s for _, _, s in pairs]
    sep = agree = 0
    for i in range(len(pairs)):
        for j in range(i + 1, len(pairs)):
            a, b = ours["cells"][pairs[i][1]], ours["cells"][pairs[j][1]]
            if a["ci_low"] > b["ci_high"] or b["ci_low"] > a["ci_high"]:
                sep += 1
                agree += (a["score"] > b["score"]) == (ps[i] > ps[j])
    n = len(pairs)
    return {"groups_matched": n, "spearman": spearman(qs, ps) if n > 2 else float("nan"), "pairs": n * (n - 1) // 2,
            "pairs_separated": sep, "separated_pairs_same_order": agree,
            "top10_quantlens": [g for _, g, _ in sorted(pairs, key=lambda p: -ours["cells"][p[1]]["score"])[:10]],
            "top10_modelopt": [n_ for n_, _, _ in sorted(pairs, key=lambda p: -p[2])[:10]],
            "matched": [(p, g, s, ours["cells"][g]["score"]) for p, g, s in pairs]}


def _side(side: str, windows: int, tokens: int) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "benchmarks.smollm_peer", "--side", side, "--windows", str(windows), "--tokens", str(tokens)]
    p = subprocess.run(cmd, check=False, cwd=root, capture_output=True, text=True)
    if p.returncode != 0:
        return {"side": side, "error": p.stderr[-3000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _read_side(side: str, path: str) -> dict:
    """The JSON line a ``--side`` run printed, from a file (an error entry if it is empty)."""
    with open(path) as f:
        lines = f.read().strip().splitlines()
    return json.loads(lines[-1]) if lines else {"side": side, "error": f"{path} is empty"}


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.smollm_peer", description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--side", choices=["both", "modelopt", "quantlens"], default="both")
    ap.add_argument("--json", default=None, metavar="PATH")
    ap.add_argument("--sides", nargs=2, default=None, metavar=("OURS", "PEER"),
                    help="compare two sides already run (each the JSON line of a --side run) instead of running them")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(int(os.environ.get("QL_THREADS", torch.get_num_threads())))
    if args.side != "both":
        fn = run_modelopt if args.side == "modelopt" else run_quantlens
        print(json.dumps(fn(args.windows, args.tokens)))
        return 0
    if args.sides:
        ours, peer = (_read_side(k, f) for k, f in zip(("quantlens", "modelopt"), args.sides))
    else:
        ours = _side("quantlens", args.windows, args.tokens)
        peer = _side("modelopt", args.windows, args.tokens)
    out: dict = {"windows": args.windows, "tokens": args.tokens, "quantlens": ours, "modelopt": peer}
    for s in (ours, peer):
        if "error" in s:
            print(f"{s['side']} failed:\n{s['error']}", flush=True)
        else:
            print(f"{s['side']:10s} {s['wall_s']:7.1f} s wall, {s.get('cpu_s', float('nan')):7.1f} s CPU  peak RSS {s['peak_rss_mb']:6.0f} MB "
                  f"({s['rss_before_mb']:.0f} MB before)", flush=True)
    if "error" not in ours and "error" not in peer:
        c = compare(peer, ours)
        out["compare"] = c
        cpu = peer.get("cpu_s", float("nan")) / ours.get("cpu_s", float("nan"))
        print(f"speed: ModelOpt / quantlens = {peer['wall_s'] / ours['wall_s']:.2f}x wall, {cpu:.2f}x CPU | groups matched {c['groups_matched']} | "
              f"Spearman {c['spearman']:.3f} | quantlens intervals separate {c['pairs_separated']}/{c['pairs']} pairs, "
              f"ModelOpt orders {c['separated_pairs_same_order']} of them the same way", flush=True)
        print("top 10 quantlens:", c["top10_quantlens"], "\ntop 10 ModelOpt: ", c["top10_modelopt"], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
