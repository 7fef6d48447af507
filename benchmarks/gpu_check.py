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

Example:
    $ PYTHONPATH=src:. python3 -m benchmarks.gpu_check --images 32
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
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--bits", default="3,4,5,6,7,8")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU here; nothing to check")
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
