"""``python -m benchmarks.gpu_check``: the cone sweep on CUDA, against the naive loop and the CPU.

On ResNet-18 (seeded weights, 64 images at 224x224 by default, bits 3..8, 8-bit activations)
it runs :func:`quantlens.analyze` with ``device="cuda"`` for the cone and the naive engine,
then the cone engine on the CPU, and prints times and the largest relative differences:

* cuda cone vs cuda naive: the same arithmetic, so equal to 1e-5 (checked);
* cuda vs cpu: float rounding differs between devices and activation quantization can
  amplify it, so this is reported with the share of cells within 1e-3 (checked >= 90%) and
  the worst-layer ranking at 4 bits compared.

TF32 is switched off for the check (it would round convolution inputs to 10 bits).
Exit status 0 when the checks pass. ``--images`` and ``--bits`` make it shorter.

``--lm``: a Llama-style causal LM instead (``transformers``, random weights, bf16, 24 blocks of
width 1024, about 370M parameters), ``--seqs`` sequences of 512 tokens, every Linear layer x
bits {4, 8}, per-group-128 weights, ``token_kl``: it prints the cone, low-memory cone and naive
times, the peak GPU memory of each, and checks cone == naive == low-memory on every cell
(bf16 arithmetic, so to 1e-3 relative).

``--llm``: SmolLM2 and Llamas of 1B and 7B shape (bf16), within a time budget, figures to one
JSON (:mod:`benchmarks.gpu_llm`, which has its own options; ``--device cpu --tiny`` is its smoke test).

Example:
    $ PYTHONPATH=src:. python3 -m benchmarks.gpu_check --images 32
    $ PYTHONPATH=src:. python3 -m benchmarks.gpu_check --lm --seqs 4
    $ PYTHONPATH=src:. python3 -m benchmarks.gpu_check --llm --json gpu_llm.json
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

__all__ = ["main"]


def _rel(a: float, b: float) -> float:
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def _diffs(r1, r2) -> list[float]:  # noqa: ANN001
    out = []
    for a, b in zip(r1.cells, r2.cells):
        assert (a.layer, a.w_bits) == (b.layer, b.w_bits)
        out.append(max(_rel(a.noise, b.noise), _rel(a.sqnr_db, b.sqnr_db), abs(a.metric - b.metric) / max(abs(a.metric), 1e-12) if abs(a.metric - b.metric) > 1e-12 else 0.0))
    return out


def _run(model, data, bits, engine: str, device: str):  # noqa: ANN001, ANN202
    import quantlens as ql

    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = ql.analyze(model, data, w_bits=bits, a_bits=8, metric="kl", engine=engine, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    return r, time.perf_counter() - t0


def main(argv=None) -> int:  # noqa: ANN001
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--llm" in argv:  # its own options: benchmarks/gpu_llm.py
        from .gpu_llm import main as llm_main

        return llm_main([a for a in argv if a != "--llm"])
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bits", default="3,4,5,6,7,8")
    ap.add_argument("--lm", action="store_true", help="the Llama-style LM check instead of ResNet-18")
    ap.add_argument("--seqs", type=int, default=4, help="--lm: sequences of 512 tokens (2 per batch)")
    ap.add_argument("--layers", type=int, default=24, help="--lm: blocks (24: about 370M parameters)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; nothing to check")
        return 2
    if args.lm:
        return lm_check(args.seqs, args.layers)
    from .data import SyntheticImages
    from .models import resnet18

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    bits = tuple(int(b) for b in args.bits.split(","))
    model, data = resnet18(seed=0), SyntheticImages(args.images, args.batch, 224, seed=1)
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, ResNet-18, {args.images} images, bits {bits}")
    _run(model, SyntheticImages(args.batch, args.batch, 224, seed=9), bits[:1], "cone", "cuda")  # warm-up
    cone, t_cone = _run(model, data, bits, "cone", "cuda")
    naive, t_naive = _run(model, data, bits, "naive", "cuda")
    cpu, t_cpu = _run(model, data, bits, "cone", "cpu")
    peak = torch.cuda.max_memory_allocated() / 2**20
    d_engine, d_device = _diffs(cone, naive), _diffs(cone, cpu)
    within = sum(d <= 1e-3 for d in d_device) / len(d_device)
    b = 4 if 4 in bits else bits[0]
    rank_gpu = [c.layer for c in cone.worst(b, 5)]
    rank_cpu = [c.layer for c in cpu.worst(b, 5)]
    print(f"  cuda cone  {t_cone:7.2f} s | cuda naive {t_naive:7.2f} s | ratio {t_naive / t_cone:.2f}x | cpu cone {t_cpu:7.2f} s")
    print(f"  peak cuda memory allocated: {peak:.0f} MiB")
    print(f"  cuda cone vs cuda naive: max rel diff {max(d_engine):.1e}")
    print(f"  cuda vs cpu: max rel diff {max(d_device):.1e}; {100 * within:.0f}% of cells within 1e-3; "
          f"worst 5 layers at {b} bits: cuda {rank_gpu} cpu {rank_cpu}")
    ok = max(d_engine) <= 1e-5 and within >= 0.9 and cone.num_samples == cpu.num_samples == args.images
    print("gpu_check: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


def lm_check(seqs: int, blocks: int) -> int:
    """The LM run of the module docstring."""
    import quantlens as ql
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=blocks,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=1024, use_cache=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(0, 32000, (2, 512), generator=g)} for _ in range(max(1, seqs // 2))]
    print(f"gpu_check --lm: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, Llama {params / 1e6:.0f}M params bf16, "
          f"{len(data) * 2} x 512 tokens, bits (4, 8), per-group-128, token_kl")
    runs = {}
    for engine in ("cone", "cone-lowmem", "naive"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = ql.analyze(model, data, w_bits=(4, 8), a_bits=None, metric="token_kl", granularity="per-group-128",
                       output_key="logits", device="cuda", engine=engine)
        torch.cuda.synchronize()
        runs[engine] = (r, time.perf_counter() - t0, torch.cuda.max_memory_allocated() / 2**30)
        print(f"  {engine:12s} {runs[engine][1]:8.1f} s   peak {runs[engine][2]:6.1f} GiB   engine used: {r.engine}, "
              f"{len(r.layers)} layers, {len(r.cells)} cells")
    cone = runs["cone"][0]
    d_naive, d_low = _diffs(cone, runs["naive"][0]), _diffs(cone, runs["cone-lowmem"][0])
    print(f"  naive / cone time {runs['naive'][1] / runs['cone'][1]:.2f}x; cone vs naive max rel diff {max(d_naive):.1e}; "
          f"cone vs low-memory {max(d_low):.1e}")
    ok = max(d_naive) <= 1e-3 and max(d_low) <= 1e-3
    print("gpu_check --lm: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
