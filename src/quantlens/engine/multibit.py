"""Several weight bit-widths of one layer in one batched cone pass, kept only where faster.

For layer ``i`` and weights ``W_1..W_K`` (one per bit-width), the cone can run once on a
batch of ``K x N`` samples: every value it reads from the float cache is repeated ``K``
times along the batch, the layer applies ``W_k`` to the ``k``-th chunk, and chunk ``k`` of
the outputs is the evaluation with ``W_k``. Larger batches use the CPU's (or GPU's) kernels
better, most of all in the small late layers.

Kernels may round differently at another batch size (a GEMM picks its blocking by shape),
so batching is decided per (layer, batch size), on the first batch of that size: the first
group of bit-widths runs separately (these are the results used) and then batched, and the
layer batches later groups of exactly that size only if

* every value the cone reads is a tensor whose first axis is the batch,
* the batched pass gave **bitwise** the same outputs as the separate passes (so numbers
  never change, and an op that mixes samples is caught), and
* it measured faster per bit-width.

The check costs one batched group per layer and batch size; it pays off from about the
third batch on.

**Off by default** (``ConeRunner(batch_bits=True)`` turns it on). Measured on ResNet-18 (CPU,
2 threads, 32 images at 224x224, 6 bit-widths) one batched pass was 1.6x to 2.5x faster than
six separate passes for the cones of layer2..layer4. But the check above is not a proof:
an op downstream of the layer may round differently at ``K x N`` samples, and the layer's
output quantizer hides such a difference on one batch and shows it on another when a value
sits at a rounding boundary (seen: 1e-7 relative on a cell of the test network's depthwise
layer). quantlens promises the naive loop's numbers, so batching stays opt-in.

At most ``budget_bytes / (4 N bytes_per_sample)`` bit-widths go in one pass, so memory stays
bounded (early, high-resolution layers run separately).

Example:
    >>> batcher = BitBatcher()                                        # doctest: +SKIP
    >>> for ev in batcher.evaluations(runner, cache, i, weights): ... # doctest: +SKIP
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import Tensor

from quantlens.engine.evaluation import Evaluation

__all__ = ["BitBatcher"]


def _split(x: Any, k: int, n: int) -> Optional[list]:
    """``x`` (a batch of ``k n`` samples, possibly nested) as ``k`` values; ``None`` if impossible."""
    if isinstance(x, Tensor):
        return list(x.chunk(k)) if x.dim() > 0 and x.shape[0] == k * n else None
    if isinstance(x, (tuple, list)):
        parts = [_split(v, k, n) for v in x]
        if any(p is None for p in parts):
            return None
        return [type(x)(p[j] for p in parts) for j in range(k)]  # type: ignore[index]
    if isinstance(x, dict):
        parts = {key: _split(v, k, n) for key, v in x.items()}
        if any(p is None for p in parts.values()):
            return None
        return [{key: p[j] for key, p in parts.items()} for j in range(k)]  # type: ignore[index]
    return [x] * k if x is None or isinstance(x, (int, float, str, bool)) else None


def _leaves(x: Any) -> list:
    if isinstance(x, (tuple, list)):
        return [leaf for v in x for leaf in _leaves(v)]
    if isinstance(x, dict):
        return [leaf for v in x.values() for leaf in _leaves(v)]
    return [x]


def _same(a: Any, b: Any) -> bool:
    la, lb = _leaves(a), _leaves(b)
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        if isinstance(x, Tensor) != isinstance(y, Tensor):
            return False
        if isinstance(x, Tensor) and not (x.shape == y.shape and torch.equal(x, y)):
            return False
    return True


class BitBatcher:
    """Chooses, per layer, batched or separate cone passes over bit-widths (see module docstring).

    Attributes:
        mode: ``{(layer index, batch size): "batched" | "separate"}`` once decided.
        groups: bit-widths per batched pass, by the same key; ``bitwise``: whether the check passed.
        timings: ``{layer index: (seconds per separate pass, seconds per batched bit-width)}``.
    """

    def __init__(self, budget_bytes: int = 256 * 2**20, enabled: bool = False) -> None:
        self.budget = budget_bytes
        self.enabled = enabled
        self.mode: dict[tuple[int, int], str] = {}
        self.groups: dict[tuple[int, int], int] = {}
        self.bitwise: dict[tuple[int, int], bool] = {}
        self.timings: dict[int, tuple[float, float]] = {}

    def _chunk(self, runner: Any, cache: dict[str, Any], i: int, k: int) -> int:
        """How many bit-widths fit in one pass (0 if the cone cannot be batched)."""
        cone = runner.cones[i]
        ref = cache[runner.layers[i].output_node]
        if not isinstance(ref, Tensor) or ref.dim() == 0:
            return 0
        n = ref.shape[0]
        per_sample = ref[0].numel() * ref.element_size()
        for name in cone.frontier:
            v = cache[name]
            if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] != n:
                return 0
            per_sample = max(per_sample, v[0].numel() * v.element_size())
        return min(k, self.budget // max(1, 4 * n * per_sample))

    def _batched(self, runner: Any, cache: dict[str, Any], i: int, ws: Sequence[Tensor]) -> Optional[list]:
        cone, k = runner.cones[i], len(ws)
        n = cache[runner.layers[i].output_node].shape[0]
        if not all(isinstance(cache[name], Tensor) for name in cone.frontier):
            return None  # a size or other non-tensor value crosses into the cone
        rep = [cache[name].repeat(k, *([1] * (cache[name].dim() - 1))) for name in cone.frontier]
        cone.qlayer.set_weights(list(ws))
        try:
            out, layer_out = cone.gm(*rep)
        except Exception:  # an op that cannot take a larger batch: run separately
            return None
        finally:
            cone.qlayer.set_weights(None)
        outs, los = _split(out, k, n), _split(layer_out, k, n)
        if outs is None or los is None:
            return None
        return [Evaluation(runner.graph.output(o), lo) for o, lo in zip(outs, los)]

    def evaluations(self, runner: Any, cache: dict[str, Any], i: int, weights: Sequence[Tensor]) -> Iterator[Any]:
        """One evaluation per weight, in order: batched where chosen, else one pass each."""
        chunk = self._chunk(runner, cache, i, len(weights)) if self.enabled and len(weights) >= 2 else 0
        n = int(cache[runner.layers[i].output_node].shape[0]) if chunk else 0
        key = (i, n)
        if chunk < 2 or self.mode.get(key) == "separate":
            for w in weights:
                yield runner.run(cache, i, w)
            return
        if key not in self.mode:  # first batch of this size: the group separately, then batched
            group = weights[:chunk]
            t0 = time.perf_counter()
            sep = [runner.run(cache, i, w) for w in group]
            t_sep = (time.perf_counter() - t0) / len(group)
            t0 = time.perf_counter()
            bat = self._batched(runner, cache, i, group)
            t_bat = (time.perf_counter() - t0) / len(group)
            same = bat is not None and all(
                _same(a.output, b.output) and _same(a.layer_output, b.layer_output) for a, b in zip(sep, bat)
            )
            self.mode[key] = "batched" if same and t_bat < 0.95 * t_sep else "separate"
            self.groups[key] = chunk
            self.bitwise[key] = same
            self.timings[i] = (t_sep, t_bat)
            del bat
            yield from sep
            del sep
            for w in weights[chunk:]:
                yield runner.run(cache, i, w)
            return
        g = self.groups[key]  # only groups of the verified size are batched
        full = len(weights) - len(weights) % g
        for start in range(0, full, g):
            evs = self._batched(runner, cache, i, weights[start : start + g])
            yield from (evs if evs is not None else (runner.run(cache, i, w) for w in weights[start : start + g]))
        for w in weights[full:]:
            yield runner.run(cache, i, w)
