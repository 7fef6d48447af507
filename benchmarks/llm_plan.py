"""``python -m benchmarks.llm_plan``: the arithmetic of docs/scale.md's plan for a 7B Llama on one GPU.

Forward FLOPs per token of a Llama block (width ``d``, MLP ``f``, sequence ``s``, key/value width
``dkv``; 2 FLOPs per multiply-add, attention counted in full, not causal half)::

    B = 2 d^2 (q) + 2 x 2 d dkv (k, v) + 4 s d (QK^T, AV) + 2 d^2 (o) + 3 x 2 d f (gate, up, down)

and ``H = 2 d V`` for ``lm_head``. A layer's cone is the rest of its block from that layer on
(q, k, v: its own matmul, attention, o and the MLP; o: o and the MLP; gate, up: two MLP
matmuls; down: one; v's cone skips the scores ``QK^T``), then every later block and the head; ``lm_head``'s cone is itself. The
cone-sum fraction is ``sum(cones) / (layers x full)``. Times are FLOPs over ``peak x
utilization``: the exact sweep is one float pass plus every cone per format, the naive loop
one full pass per cell, the estimate a forward and backward (3 passes), then its check (one
float pass and ``2k`` cones at one format).

Example:
    >>> round(cone_fraction(4096, 11008, 2048, 32000, 32), 3)
    0.51
"""

from __future__ import annotations

import argparse

__all__ = ["cone_fraction", "cones", "main"]


def cones(d: int, f: int, s: int, vocab: int, blocks: int, dkv: int | None = None) -> tuple[float, list[float]]:
    """Forward FLOPs per token of the full pass, and of each layer's cone (topological order)."""
    dkv = dkv or d
    q, kv, o, att, mlp = 2 * d * d, 2 * d * dkv, 2 * d * d, 4 * s * d, 2 * d * f
    block, head = q + 2 * kv + o + att + 3 * mlp, 2 * d * vocab
    out = []
    for i in range(blocks):
        rest = (blocks - 1 - i) * block + head
        after_attn = att + o + 3 * mlp + rest
        after_av = att // 2 + o + 3 * mlp + rest  # v feeds A.V only; the scores QK^T do not read it
        out += [q + after_attn, kv + after_attn, kv + after_av, o + 3 * mlp + rest, 2 * mlp + rest, 2 * mlp + rest, mlp + rest]
    return float(blocks * block + head), [*out, float(head)]


def cone_fraction(d: int, f: int, s: int, vocab: int, blocks: int, dkv: int | None = None) -> float:
    full, c = cones(d, f, s, vocab, blocks, dkv)
    return sum(c) / (len(c) * full)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seqs", type=int, default=32)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--formats", type=int, default=4)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--peak", type=float, default=989e12, help="dense bf16 FLOP/s (H200: 989e12)")
    a = p.parse_args(argv)
    full, c = cones(4096, 11008, a.tokens, 32000, 32)
    frac, tokens = sum(c) / (len(c) * full), a.seqs * a.tokens
    cells = len(c) * a.formats
    print(f"Llama-2-7B shape: {len(c)} layers, {full / 1e9:.2f} GFLOP/token, cone-sum fraction {frac:.4f} "
          f"(bound {1 / frac:.2f}x), {tokens} tokens: full pass {full * tokens:.3e} FLOP")
    for util in (0.3, 0.4, 0.5):
        t = full * tokens / (a.peak * util)
        exact, naive, est = (1 + cells * frac) * t, (1 + cells) * t, (3 + 1 + 2 * a.k * frac) * t
        print(f"  utilization {util:.0%}: full pass {t:.2f} s | exact {exact:6.0f} s ({exact / cells:.2f} s/cell) | "
              f"naive {naive:6.0f} s | estimate {est:4.0f} s ({est / cells:.3f} s/cell) | exact / estimate {exact / est:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
