"""``python -m benchmarks.gpu_check --llm``: LLM-sized sweeps on one GPU, within a time budget, to one JSON.

Subjects (each in its own process, so that one's memory never stays for the next):

* ``smollm2``: SmolLM2-135M-Instruct (:mod:`quantlens.demo.smollm`), cast to bf16 on the device;
* ``llama-1b``: Llama-3.2-1B's shape (16 blocks, width 2048, 32/8 heads, MLP 8192, vocabulary
  128256, tied ``lm_head``), random weights, bf16, built directly on the device;
* ``llama-7b``: Llama-2-7B's shape (32 blocks, width 4096, 32 heads, MLP 11008, vocabulary 32000),
  random weights, bf16, built on the device: 224 block Linears + ``lm_head`` = 225 layers.

Each subject runs these stages in order, weight formats ``nvfp4, mxfp4, fp8-e4m3, int4-g128``,
float activations, ``token_kl`` on ``--seqs`` random sequences of ``--tokens`` ids:

1. ``build``: the model (parameters, layers, weight bytes);
2. ``float``: one float pass over the data (``t_float``), after one warm-up batch;
3. ``cone_vs_naive``: the cone and the naive engine on the same cells (the 7 Linears of the first,
   middle and last block and ``lm_head``, first format): seconds per cell of each, their ratio and
   the largest relative difference of noise / SQNR / metric;
4. ``estimate``: ``method=Estimate(k)`` over every layer x format: seconds per cell of the
   first-order pass, of its exact check, and in all; the check's Spearman;
5. ``exact``: the cone sweep over every layer x format: seconds per cell; Spearman of the
   estimate against it per format.

A stage whose predicted time does not fit what is left of the subject's budget is skipped, and
the JSON says why (with the prediction). Out of memory (``torch.cuda.OutOfMemoryError``,
``MemoryError``) or any other error in a stage is recorded and the next stage runs; the
subject's process is killed at its budget, and the JSON keeps the stages it finished. The
subjects share ``--budget`` seconds (default 450, under 8 minutes with start-up) in the
proportions of :data:`SHARES`; time one does not use goes to the next.

Peak memory is ``torch.cuda.max_memory_allocated`` per stage on CUDA; on the CPU, the process's
peak resident memory (``ru_maxrss``) at the end of each stage.

Example:
    $ PYTHONPATH=src:. python -m benchmarks.gpu_check --llm --json gpu_llm.json       # on a GPU
    $ PYTHONPATH=src:. python -m benchmarks.gpu_check --llm --device cpu --tiny          # smoke test
    $ PYTHONPATH=src:. python -m benchmarks.gpu_check --llm --device cpu --subjects smollm2 --dtype float32 \
          --seqs 4 --tokens 64 --batch 4 --budget 1200                               # CPU timings
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMATS", "SHAPES", "SHARES", "TINY", "Options", "main", "run_subject", "sample_layers"]

# LlamaConfig keywords of each synthetic subject (the published configs' dimensions)
SHAPES: dict[str, dict[str, Any]] = {
    "llama-1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True, "rope_theta": 500000.0},
    "llama-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                 "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False},
}
# --tiny: the same layout (GQA or not, tied or not) at toy width and depth, for a CPU smoke test
TINY: dict[str, dict[str, Any]] = {
    "llama-1b": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": True},
    "llama-7b": {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
                 "num_key_value_heads": 4, "vocab_size": 384, "tie_word_embeddings": False},
}
SHARES = {"smollm2": 0.2, "llama-1b": 0.3, "llama-7b": 0.5}
FORMATS = ("nvfp4", "mxfp4", "fp8-e4m3", "int4-g128")
OVERHEAD_S = 20.0  # assumed per analyze call for capture (torch.export) and preparation, in predictions
OOM = (torch.cuda.OutOfMemoryError, MemoryError)


@dataclasses.dataclass(frozen=True)
class Options:
    """One subject's run: device, data (``seqs`` x ``tokens`` in batches of ``batch``), formats, the
    estimate's ``k`` and the subject's budget in seconds."""

    device: str = "cuda"
    tiny: bool = False
    seqs: int = 4
    tokens: int = 512
    batch: int = 2
    formats: tuple[str, ...] = FORMATS
    k: int = 5
    budget_s: float = 150.0
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        for key in ("seqs", "tokens", "batch", "k"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not self.formats:
            raise ValueError("give at least one format")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {self.dtype!r}")


def build(name: str, opts: Options) -> tuple[torch.nn.Module, int]:
    """The subject's model in ``opts.dtype`` (bf16) on ``opts.device`` (eval, no KV cache) and its
    vocabulary size."""
    dev, dtype = torch.device(opts.device), getattr(torch, opts.dtype)
    if name == "smollm2":
        from quantlens.demo import smollm

        src = smollm.model()  # the demo's cached float32 model: copied, never changed
        import copy

        m = copy.deepcopy(src).to(device=dev, dtype=dtype).eval()
        return m, int(m.config.vocab_size)
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = (TINY if opts.tiny else SHAPES)[name]
    cfg = LlamaConfig(**shape, max_position_embeddings=max(opts.tokens, 256), use_cache=False)
    torch.manual_seed(0)
    with dev:  # parameters are created on the device (a 7B model never touches host memory)
        m = AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    return m, int(cfg.vocab_size)


def token_data(vocab: int, opts: Options) -> list[dict[str, torch.Tensor]]:
    """``seqs`` seeded random sequences of ``tokens`` ids in batches of ``batch`` (CPU tensors)."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (opts.seqs, opts.tokens), generator=g)
    return [{"input_ids": ids[i:i + opts.batch], "attention_mask": torch.ones_like(ids[i:i + opts.batch])}
            for i in range(0, opts.seqs, opts.batch)]


def sample_layers(names: list[str]) -> list[str]:
    """The Linears of the first, middle and last decoder block, and ``lm_head``: a sample whose
    mean depth is the model's, so its mean cone cost is the whole sweep's."""
    blocks = sorted({int(n.split("layers.")[1].split(".")[0]) for n in names if "layers." in n})
    keep = {blocks[0], blocks[len(blocks) // 2], blocks[-1]} if blocks else set()
    return [n for n in names if n == "lm_head" or ("layers." in n and int(n.split("layers.")[1].split(".")[0]) in keep)]


def _rel(a: float, b: float) -> float:
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    return abs(a - b) / max(abs(a), abs(b), 1e-12)


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def _peak(dev: str) -> dict[str, float | None]:
    if dev.startswith("cuda"):
        return {"peak_cuda_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


class _Record:
    """The subject's figures, rewritten to ``path`` (atomically) after every stage."""

    def __init__(self, name: str, opts: Options, path: Path | None) -> None:
        self.path, self.t0 = path, time.perf_counter()
        self.data: dict[str, Any] = {"subject": name, "options": dataclasses.asdict(opts), "stages": {},
                                     "skipped": {}, "errors": {}, "running": None}
        self.opts = opts

    def save(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1))
            os.replace(tmp, self.path)

    def left(self) -> float:
        return self.opts.budget_s - (time.perf_counter() - self.t0)

    def stage(self, name: str, predicted_s: float | None, fn: Callable[[], dict]) -> dict | None:
        """Run ``fn`` unless ``predicted_s`` exceeds the budget left (None: always run); record its
        figures, or the skip, or the error (out of memory named as such); never raises."""
        if predicted_s is not None and predicted_s > self.left():
            self.data["skipped"][name] = (f"predicted {predicted_s:.0f} s, {max(0.0, self.left()):.0f} s of the "
                                          f"subject's {self.opts.budget_s:.0f} s budget left")
            self.save()
            return None
        self.data["running"] = name
        self.save()
        dev = self.opts.device
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        out: dict | None = None
        t = time.perf_counter()
        try:
            out = fn()
            _sync(dev)
            out = {**out, "seconds": round(time.perf_counter() - t, 3), **_peak(dev)}
            self.data["stages"][name] = out
        except OOM as e:
            self.data["errors"][name] = f"out of memory after {time.perf_counter() - t:.1f} s: {str(e).splitlines()[0][:200]}"
        except Exception as e:  # noqa: BLE001 - unattended: record and go on
            self.data["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        self.data["running"] = None
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.save()
        gc.collect()
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
        return out


def _cells(r: Any) -> dict:
    return {(c.layer, c.format or c.w_bits): c for c in r.cells}


def run_subject(name: str, opts: Options, path: Path | None = None) -> dict:
    """All stages of the module docstring for one subject; the figures (also written to ``path``)."""
    import quantlens as ql
    from quantlens.sweep.estimate import spearman

    rec = _Record(name, opts, path)
    torch.backends.cuda.matmul.allow_tf32 = False
    box: dict[str, Any] = {}

    def do_build() -> dict:
        box["model"], vocab = build(name, opts)
        box["data"] = token_data(vocab, opts)
        m = box["model"]
        names = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear)]
        box["names"] = names
        params = sum(p.numel() for p in m.parameters())
        return {"params": params, "weight_gib": round(sum(p.numel() * p.element_size() for p in m.parameters()) / 2**30, 3),
                "linear_layers": len(names), "dtype": str(next(m.parameters()).dtype), "vocab": vocab}

    if rec.stage("build", None, do_build) is None:
        return rec.data
    model, data = box["model"], box["data"]
    common = {"formats": list(opts.formats), "a_bits": None, "metric": "token_kl", "output_key": "logits",
              "device": opts.device}
    n_cells = len(box["names"]) * len(opts.formats)

    def do_float() -> dict:
        dev = torch.device(opts.device)
        with torch.inference_mode():
            model(**{k: v.to(dev) for k, v in data[0].items()})  # warm-up
            _sync(opts.device)
            t = time.perf_counter()
            for b in data:
                model(**{k: v.to(dev) for k, v in b.items()})
            _sync(opts.device)
        return {"t_float_s": round(time.perf_counter() - t, 4), "tokens": opts.seqs * opts.tokens}

    fl = rec.stage("float", None, do_float)
    t_float = fl["t_float_s"] if fl else 1.0
    sample = sample_layers(box["names"])

    def do_cone_vs_naive() -> dict:
        out, runs = {"layers": len(sample), "format": opts.formats[0]}, {}
        for engine in ("cone", "naive"):
            _sync(opts.device)
            t = time.perf_counter()
            runs[engine] = ql.analyze(model, data, engine=engine, layers=sample, **{**common, "formats": [opts.formats[0]]})
            _sync(opts.device)
            out[f"{engine}_s"] = round(time.perf_counter() - t, 3)
            out[f"{engine}_s_per_cell"] = round(out[f"{engine}_s"] / len(runs[engine].cells), 4)
        a, b = _cells(runs["cone"]), _cells(runs["naive"])
        out["naive_over_cone"] = round(out["naive_s"] / out["cone_s"], 2)
        out["max_rel_diff"] = max(max(_rel(a[k].noise, b[k].noise), _rel(a[k].sqnr_db, b[k].sqnr_db), _rel(a[k].metric, b[k].metric))
                                  for k in a)
        return out

    cvn = rec.stage("cone_vs_naive", 2 * OVERHEAD_S + 2 * len(sample) * t_float, do_cone_vs_naive)
    cone_cell = cvn["cone_s_per_cell"] if cvn else t_float

    def do_estimate() -> dict:
        r = ql.analyze(model, data, method=ql.Estimate(k=opts.k), **common)
        box["estimate"] = r
        info = r.extra["estimate"]
        return {"cells": len(r.cells), "layers": len(r.layers), "first_order_s": round(info["estimate_s"], 3),
                "check_s": round(info["check_s"], 3), "checked_cells": info["checked_cells"],
                "first_order_s_per_cell": round(info["estimate_s"] / len(r.cells), 5),
                "check_s_per_checked_cell": round(info["check_s"] / max(1, info["checked_cells"]), 4),
                "check_spearman": info["spearman"], "trusted": info["trusted"]}

    est = rec.stage("estimate", OVERHEAD_S + 4 * t_float + 2 * opts.k * cone_cell, do_estimate)
    if est:
        est["s_per_cell"] = round(est["seconds"] / est["cells"], 5)

    def do_exact() -> dict:
        r = ql.analyze(model, data, **common)
        out: dict[str, Any] = {"cells": len(r.cells), "layers": len(r.layers)}
        if "estimate" in box:
            e, x = _cells(box["estimate"]), _cells(r)
            out["spearman_estimate_vs_exact"] = {
                f: spearman([e[k].estimate for k in x if k[1] == f], [x[k].degradation for k in x if k[1] == f])
                for f in opts.formats}
        return out

    ex = rec.stage("exact", OVERHEAD_S + n_cells * cone_cell, do_exact)
    if ex:
        ex["s_per_cell"] = round(ex["seconds"] / ex["cells"], 5)
    rec.save()
    return rec.data


def _child(name: str, opts_json: str, path: str) -> int:
    opts = Options(**{**json.loads(opts_json), "formats": tuple(json.loads(opts_json)["formats"])})
    run_subject(name, opts, Path(path))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check --llm", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="toy widths and depths of the same shapes (a CPU smoke test)")
    p.add_argument("--subjects", default=None, help=f"comma list of {', '.join(SHARES)} (default: all; --tiny: the two Llamas)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for all subjects together (default 450)")
    p.add_argument("--seqs", type=int, default=4)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="the models' dtype (float32 for CPU timings: CPUs multiply bf16 slowly)")
    p.add_argument("--json", default="gpu_check_llm.json")
    p.add_argument("--child", nargs=3, metavar=("SUBJECT", "OPTIONS", "PATH"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return _child(*a.child)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check --llm: no CUDA GPU here; nothing to check (--device cpu --tiny runs the smoke test)")
        return 2
    subjects = a.subjects.split(",") if a.subjects else (["llama-1b", "llama-7b"] if a.tiny else list(SHARES))
    unknown = [s for s in subjects if s not in SHARES]
    if unknown:
        p.error(f"unknown subject(s) {', '.join(unknown)}: use {', '.join(SHARES)}")
    t0 = time.perf_counter()
    out: dict[str, Any] = {"schema": "quantlens/gpu-check-llm-v1", "device": a.device, "torch": torch.__version__,
                           "gpu": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else None,
                           "budget_s": a.budget, "subjects": []}
    root = Path(__file__).resolve().parent.parent
    for j, name in enumerate(subjects):
        left = a.budget - (time.perf_counter() - t0)
        budget = left * SHARES[name] / sum(SHARES[s] for s in subjects[j:])
        opts = Options(device=a.device, tiny=a.tiny, seqs=a.seqs, tokens=a.tokens, batch=a.batch,
                       formats=tuple(a.formats.split(",")), k=a.k, budget_s=round(budget, 1), dtype=a.dtype)
        part = Path(a.json).with_suffix(f".{name}.part.json").resolve()
        part.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.gpu_llm", "--child", name, json.dumps(dataclasses.asdict(opts)), str(part)]
        ts = time.perf_counter()
        try:
            proc = subprocess.run(cmd, check=False, cwd=root, capture_output=True, text=True, timeout=max(0.1, budget))
            status = "finished" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:] }"
        except subprocess.TimeoutExpired:  # run() kills the child
            status = "killed at its budget"
        rec = json.loads(part.read_text()) if part.exists() else {"subject": name, "stages": {}}
        part.unlink(missing_ok=True)
        if status != "finished" and rec.get("running"):
            status += f" during stage {rec['running']}"
        rec.update({"status": status, "wall_s": round(time.perf_counter() - ts, 1), "budget_s": opts.budget_s})
        out["subjects"].append(rec)
        print(f"{name:9s} {status:30s} {rec['wall_s']:6.1f} s  stages {', '.join(rec['stages'])}"
              + (f"  skipped {', '.join(rec.get('skipped', {}))}" if rec.get("skipped") else "")
              + (f"  errors {rec['errors']}" if rec.get("errors") else ""), flush=True)
    out["total_s"] = round(time.perf_counter() - t0, 1)
    Path(a.json).write_text(json.dumps(out, indent=1))
    print(f"gpu_check --llm: {out['total_s']} s, figures in {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
