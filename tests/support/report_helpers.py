"""Helpers for the report tests: real demo runs, hand-made results, and parsing the page back."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Optional

from quantlens.sweep.results import Cell, LayerInfo, SweepResult, WeightStats

EVIL = "<img src=x onerror=alert(1)>"

_PLOT = re.compile(r"Plotly\.newPlot\((\"[^\"]*\"), (.*?)\);</script>", re.S)


def demo_result(demo_model, demo_data, **kw) -> SweepResult:
    """A real sweep of the digits CNN (a few seconds)."""
    import quantlens as ql

    if "config" not in kw:
        kw.setdefault("w_bits", (3, 4, 6, 8))
    return ql.analyze(demo_model, demo_data, metric="top1", progress=False, model_name="quantlens.demo:model", **kw)


def write_run(result: SweepResult, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "results.json")
    return out


def without_plotly_js(html: str) -> str:
    """The page minus the inlined plotly.js bundle (the first <script> in <head>)."""
    i = html.index("<script>")
    j = html.index("</script>", i)
    return html[:i] + html[j + len("</script>"):]


def _strict(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def plots(html: str) -> dict[str, tuple[list, dict]]:
    """``div id -> (data, layout)`` of every Plotly.newPlot call on the page (strict JSON: no NaN)."""
    out = {}
    for m in _PLOT.finditer(without_plotly_js(html)):
        div = json.loads(m.group(1))
        data, layout, _config = json.loads("[" + m.group(2) + "]", parse_constant=_strict)
        out[div] = (data, layout)
    return out


class Tags(HTMLParser):
    """Every start tag and its attributes, and the text, of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, Optional[str]]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):  # noqa: ANN001
        self.tags.append((tag, attrs))

    def handle_data(self, data):  # noqa: ANN001
        self.text.append(data)


def parse(html: str) -> Tags:
    t = Tags()
    t.feed(without_plotly_js(html))
    return t


def _w(absmax_over_std: float, outliers: int, n: int = 1000) -> WeightStats:
    std = 0.1
    edges = [-absmax_over_std * std + i * (2 * absmax_over_std * std) / 4 for i in range(5)]
    return WeightStats(min=-absmax_over_std * std, max=absmax_over_std * std, mean=0.0, std=std,
                       outliers_3sigma=outliers, hist_counts=[outliers // 2, n // 2 - outliers // 2, n // 2 - outliers // 2, outliers // 2],
                       hist_edges=edges)


def synthetic_result(names: Optional[list[str]] = None, metric: str = "top1") -> SweepResult:
    """Four layers with known causes: ``outl`` (weight outliers), ``dw`` (depthwise, mean shift),
    ``wide`` (input range 20x the others), ``fine`` (nothing); degradations at 3/4/8 bits."""
    names = names or ["outl", "dw", "wide", "fine"]
    kinds = ["conv", "depthwise", "conv", "linear"]
    ws = [_w(9.0, 40), _w(2.5, 2), _w(3.0, 3), _w(2.0, 0)]
    ranges = [(0.0, 1.0), (0.0, 1.2), (-20.0, 20.0), (0.0, 0.9)]
    layers = tuple(LayerInfo(index=i, name=n, op="Linear" if k == "linear" else "Conv2d", params=1000, kind=k,
                             activation="ReLU", weight=w, input_range=r, output_range=(0.0, 2.0))
                   for i, (n, k, w, r) in enumerate(zip(names, kinds, ws, ranges)))
    deg4 = [0.06, 0.02, 0.015, 0.0]
    shift = [0.01, 0.3, 0.02, 0.0]
    cells = []
    for b, scale in ((3, 3.0), (4, 1.0), (8, 0.0)):
        for i, n in enumerate(names):
            d = deg4[i] * scale
            cells.append(Cell(layer=n, w_bits=b, a_bits=8, noise=0.1 * (i + 1) * (9 - b), sqnr_db=10.0 + 3 * b - i,
                              metric=0.9 - d, degradation=d, mean_shift=shift[i] * scale, w_clip=0.9 * 0.1 * 9.0 if i == 0 else ws[i].absmax))
    return SweepResult(metric_name=metric, higher_is_better=True, baseline=0.9, num_samples=100, layers=layers,
                       cells=tuple(cells), config={"w_bits": [3, 4, 8], "a_bits": 8, "weight": {"symmetric": True, "estimator": "sawb"}},
                       model="synthetic", engine="cone", elapsed_s=1.0)


def with_intervals(names: Optional[list[str]] = None, n: int = 450) -> SweepResult:
    """The synthetic result with Tango intervals as if each cell's degradation were d*n discordant samples."""
    import dataclasses

    from quantlens.stats.intervals import tango_interval

    r = synthetic_result(names)
    cells = []
    for c in r.cells:
        b = round(c.degradation * n)
        lo, hi = tango_interval(b, 0, n)
        cells.append(dataclasses.replace(c, degradation=b / n, ci_low=float(lo), ci_high=float(hi), samples=n))
    return dataclasses.replace(r, cells=tuple(cells), num_samples=n)


LLM_ROLES = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
             "mlp.down_proj"]


def llm_estimate_result(blocks: int = 30, checked: tuple[str, ...] = ("model.layers.3.mlp.down_proj", "model.layers.7.self_attn.v_proj",
                                                                           "lm_head")) -> SweepResult:
    """An ``--estimate`` result shaped like SmolLM2: ``blocks`` x 7 roles + ``lm_head``, formats nvfp4 and
    fp8-e4m3 (nll). Every cell has ``estimate = (i + 1) * 1e-4`` (``i``: the layer's index) times 10 at
    nvfp4; the ``checked`` layers at nvfp4 also hold a measured degradation ``2 * estimate``."""
    names = [f"model.layers.{b}.{r}" for b in range(blocks) for r in LLM_ROLES] + ["lm_head"]
    layers = tuple(LayerInfo(index=i, name=n, op="Linear", params=1000 + i, kind="linear", weight=_w(3.0, 1))
                   for i, n in enumerate(names))
    nan = float("nan")
    cells = []
    for fmt, scale in (("nvfp4", 10.0), ("fp8-e4m3", 1.0)):
        for i, n in enumerate(names):
            e = (i + 1) * 1e-4 * scale
            measured = fmt == "nvfp4" and n in checked
            d = 2 * e if measured else nan
            cells.append(Cell(layer=n, w_bits=4 if fmt == "nvfp4" else 8, a_bits=8, noise=0.1 if measured else nan,
                              sqnr_db=20.0 if measured else nan, metric=3.0 + d, degradation=d, estimate=e,
                              samples=8 if measured else 0, format=fmt))
    extra = {"estimate": {"k": 2, "check_bits": "nvfp4", "spearman": 0.85, "topk_overlap": {"nvfp4": 0.5}, "trusted": True,
                          "checked_cells": len(checked), "estimate_s": 1.0, "check_s": 1.0,
                          "unit": "expected nll change per token (nats)"}}
    return SweepResult(metric_name="nll", higher_is_better=False, baseline=3.0, num_samples=8, layers=layers, cells=tuple(cells),
                       config={"formats": ["nvfp4", "fp8-e4m3"], "a_bits": 8}, model="llm", engine="estimate", elapsed_s=2.0,
                       extra=extra)
