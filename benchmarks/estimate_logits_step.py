"""``python -m benchmarks.estimate_logits_step [--tokens 1024] [--vocab 49152] [--width 576] [--metric nll]``

The estimate's logits step alone (:mod:`quantlens.sweep.estimate`), before and after chunking, at
SmolLM2-135M's vocabulary: from logits ``y = h W^T`` (``h``: ``[4, T/4, width]`` hidden states,
``W``: the ``[vocab, width]`` head) to the gradient at ``h`` of the sampled labels'
log-likelihood and, for ``nll``, of the true next tokens' nll (the two backwards of a batch).

* ``old``: the whole ``[T, vocab]`` float64 log-softmax (and the metric's nll over all tokens)
  differentiated through autograd, the graph kept for the second backward (the code before).
* ``new``: :func:`~quantlens.sweep.estimate._sampled_output_gradient` and
  :func:`~quantlens.sweep.estimate._true_nll_gradient`, 64 rows at a time in float64 on a
  detached copy, then ``autograd.grad(y, h, g)``.

Each runs in its own process, which prints its peak resident memory above what it held before the
step (``VmHWM`` reset through ``/proc/self/clear_refs``), its CPU and wall seconds and a digest of
``h``'s two gradients (equal digests: bitwise-equal results). Single-threaded by default
(``--threads``), so CPU time is the work done on a shared machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
import types

import torch
import torch.nn.functional as F

from benchmarks.procmem import status_mb

__all__ = ["main"]


def _old(y, inputs, labels, metric, gen):
    """The code before: ``_sampled_log_likelihood`` and ``metric.token_scores`` on the whole logits."""
    from quantlens.metrics.task import token_mask

    logits = y.reshape(-1, y.shape[-1]).double()
    keep = token_mask(y, inputs)
    c = torch.multinomial(F.softmax(logits.detach(), 1).cpu(), 1, generator=gen).reshape(-1)
    ll = F.log_softmax(logits, 1).gather(1, c[:, None]).reshape(-1)
    loss = ll[keep.reshape(-1)].sum() if keep is not None else ll.sum()
    yield loss
    if metric is not None:
        true_nll, _ = metric.token_scores(y, y, labels, inputs)
        yield true_nll.sum()


def run(mode: str, tokens: int, vocab: int, width: int, metric_name: str, threads: int) -> dict:
    from quantlens.metrics.tokens import NLL
    from quantlens.sweep import estimate

    torch.set_num_threads(threads)
    g0 = torch.Generator().manual_seed(0)
    batch = 4
    seq = tokens // batch
    head = torch.randn(vocab, width, generator=g0) / width ** 0.5
    h = (torch.randn(batch, seq, width, generator=g0) * 2).requires_grad_(True)
    ids = torch.randint(0, vocab, (batch, seq), generator=g0)
    inputs = types.SimpleNamespace(kwargs={"input_ids": ids, "attention_mask": torch.ones_like(ids)}, args=())
    metric = NLL() if metric_name == "nll" else None
    y = h @ head.t()
    signed = metric is not None
    gen = torch.Generator().manual_seed(1)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = status_mb("VmHWM")
    t0, c0 = time.perf_counter(), time.process_time()
    grads = []
    if mode == "old":
        losses = _old(y, inputs, None, metric, gen)
        grads.append(torch.autograd.grad(next(losses), h, retain_graph=signed)[0])
        if signed:
            grads.append(torch.autograd.grad(next(losses), h)[0])
    else:
        rows, keep = estimate._output_rows(y.detach(), inputs, "nll")
        g, _ = estimate._sampled_output_gradient(rows, keep, gen)
        grads.append(torch.autograd.grad(y, h, g.view(y.shape), retain_graph=signed)[0])
        del g, rows
        if signed:
            g, _ = estimate._true_nll_gradient(metric, y, None, inputs)
            grads.append(torch.autograd.grad(y, h, g)[0])
    cpu, wall = time.process_time() - c0, time.perf_counter() - t0
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in grads)).hexdigest()[:16]
    return {"mode": mode, "peak_mb": status_mb("VmHWM") - before, "logits_mb": y.numel() * y.element_size() / 2 ** 20,
            "cpu_s": cpu, "wall_s": wall, "digest": digest}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--width", type=int, default=576)
    ap.add_argument("--metric", default="nll", choices=["nll", "token_kl"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", default=None, choices=["old", "new"], help="(internal) run one mode in this process")
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(run(args.mode, args.tokens, args.vocab, args.width, args.metric, args.threads)))
        return
    res = {}
    for mode in ("old", "new"):
        cmd = [sys.executable, "-m", "benchmarks.estimate_logits_step", "--mode", mode, "--tokens", str(args.tokens),
               "--vocab", str(args.vocab), "--width", str(args.width), "--metric", args.metric, "--threads", str(args.threads)]
        res[mode] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    print(f"logits step, {args.tokens} tokens x vocab {args.vocab} ({res['old']['logits_mb']:.0f} MB of float32 logits), "
          f"metric {args.metric}, {args.threads} thread(s):")
    for mode in ("old", "new"):
        r = res[mode]
        print(f"  {mode}: peak +{r['peak_mb']:.0f} MB | CPU {r['cpu_s']:.2f} s | wall {r['wall_s']:.2f} s | digest {r['digest']}")
    o, n = res["old"], res["new"]
    print(f"  new/old: memory {n['peak_mb'] / o['peak_mb']:.2f}, CPU {n['cpu_s'] / o['cpu_s']:.2f} | "
          f"bitwise equal: {o['digest'] == n['digest']}")


if __name__ == "__main__":
    main()
