"""``quantlens verify`` for a GGUF file: does the file hold the plan, and the simulation's weights?

The file is read back with ``gguf.GGUFReader`` (nothing of quantlens's writer is reused). For
every tensor the plan expects (:func:`~quantlens.export.gguf.plan_tensors`):

* its ggml type must equal the plan's (``Q4_K`` for ``gguf-q4_k``, F32 for what the plan leaves float);
* ``gguf.quants.dequantize`` of its bytes, reshaped to the parameter and with the Q/K
  permutation undone (:func:`~quantlens.export.gguf_llama.unpermute`), is compared with the
  simulation's weight: :func:`~quantlens.quant.quantizer.quantize_weight` of the model's
  float32 weight under the layer's spec (for a layer outside the plan, the float weight).
  ``exact`` is bitwise equality (``+0 == -0``), ``max_abs_diff`` the largest difference.

A tensor missing from the file, or one the plan does not expect, is a mismatch too.
``verify.json`` carries ``"schema": "quantlens/verify-gguf-v1"``. Running the file in llama.cpp
(perplexity) needs ``llama-cpp-python``, which ships only as a source package here (a build of
15+ minutes): not done.

Example:
    >>> r = verify_gguf("out/model.gguf", model, "plan/quant_config.json")    # doctest: +SKIP
    >>> r.all_types_match, r.all_values_equal                                 # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from quantlens.core import jsonio
from quantlens.core.layer_config import QuantConfig
from quantlens.errors import QuantlensError
from quantlens.export.gguf import plan_tensors, read_plan
from quantlens.export.gguf_llama import unpermute
from quantlens.quant.quantizer import quantize_weight

__all__ = ["TensorCheck", "GgufVerifyResult", "verify_gguf", "GGUF_VERIFY_SCHEMA"]

GGUF_VERIFY_SCHEMA = "quantlens/verify-gguf-v1"


@dataclass(frozen=True)
class TensorCheck:
    """One tensor: the type the plan expects and the file's (None: missing), and its values."""

    name: str
    source: str
    planned_type: Optional[str]
    file_type: Optional[str]
    fmt: Optional[str] = None
    exact: bool = False
    max_abs_diff: float = float("nan")
    num_values: int = 0

    @property
    def type_ok(self) -> bool:
        return self.planned_type == self.file_type

    def describe_mismatch(self) -> str:
        if self.file_type is None:
            return f"{self.name} is missing (plan: {self.planned_type})"
        if self.planned_type is None:
            return f"{self.name} is {self.file_type} (not in the plan)"
        return f"{self.name} is {self.file_type} (plan: {self.planned_type})"

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "planned_type": self.planned_type, "file_type": self.file_type,
                "format": self.fmt, "exact": self.exact, "max_abs_diff": self.max_abs_diff, "num_values": self.num_values}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorCheck":
        return cls(str(d["name"]), str(d["source"]), d.get("planned_type"), d.get("file_type"), d.get("format"), bool(d["exact"]),
                   jsonio.num(d["max_abs_diff"]), int(d["num_values"]))


@dataclass(frozen=True)
class GgufVerifyResult(jsonio.Artifact):
    """The GGUF check (module docstring): one :class:`TensorCheck` per tensor."""

    SCHEMA = GGUF_VERIFY_SCHEMA
    WHAT = "GGUF verify result"
    FILE = "verify.json"

    path: str
    tensors: tuple[TensorCheck, ...]
    extra: dict = field(default_factory=dict)

    @property
    def type_mismatches(self) -> list[TensorCheck]:
        return [t for t in self.tensors if not t.type_ok]

    @property
    def all_types_match(self) -> bool:
        return not self.type_mismatches

    @property
    def all_values_equal(self) -> bool:
        return all(t.exact for t in self.tensors if t.type_ok)

    @property
    def max_abs_diff(self) -> float:
        diffs = [t.max_abs_diff for t in self.tensors if t.type_ok]
        return max(diffs) if diffs else float("nan")

    def mismatch_line(self) -> str:
        """One line naming every tensor whose type differs from the plan."""
        bad = self.type_mismatches
        return f"{self.path}: {len(bad)} tensor(s) differ from the plan: " + "; ".join(t.describe_mismatch() for t in bad)

    def to_dict(self) -> dict:
        planned = [t for t in self.tensors if t.fmt is not None]
        return jsonio.clean({
            "schema": GGUF_VERIFY_SCHEMA, "runtime": "gguf", "path": self.path,
            "num_tensors": len(self.tensors), "num_planned": len(planned),
            "all_types_match": self.all_types_match, "all_values_equal": self.all_values_equal,
            "flagged": not (self.all_types_match and self.all_values_equal),
            "max_abs_diff": self.max_abs_diff,
            "values_compared": sum(t.num_values for t in self.tensors if t.type_ok),
            "type_mismatches": [t.describe_mismatch() for t in self.type_mismatches],
            "tensors": [t.to_dict() for t in self.tensors],
            "llama_cpp": "not run: llama-cpp-python ships only as a source package here (a build of 15+ minutes)",
            **self.extra,
        })

    @classmethod
    def from_dict(cls, d: dict) -> "GgufVerifyResult":
        known = {"schema", "runtime", "path", "num_tensors", "num_planned", "all_types_match", "all_values_equal", "flagged",
                 "max_abs_diff", "values_compared", "type_mismatches", "tensors", "llama_cpp"}
        return cls(str(d["path"]), tuple(TensorCheck.from_dict(t) for t in d["tensors"]), {k: v for k, v in d.items() if k not in known})


def _read(path: Path) -> dict[str, Any]:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise QuantlensError(f"{path}: not a readable GGUF file ({e})") from None
    return {t.name: t for t in reader.tensors}


def _simulated(model: Any, config: QuantConfig, source: str, layer: Optional[str]) -> torch.Tensor:
    w = dict(model.named_parameters(remove_duplicate=False))[source].detach().to(torch.float32).cpu()
    spec = config.layer(layer).weight if layer is not None else None
    return w if spec is None else quantize_weight(w, spec).weight.to(torch.float32)


def verify_gguf(path: Union[str, os.PathLike], model: Any, config: Union[str, os.PathLike, QuantConfig]) -> GgufVerifyResult:
    """Check ``path`` against ``config`` on ``model`` (module docstring)."""
    import gguf

    p = Path(path)
    if not p.is_file():
        raise QuantlensError(f"--gguf {path}: no such file")
    base = read_plan(config)
    expected = plan_tensors(model, base)
    found = _read(p)
    checks: list[TensorCheck] = []
    with torch.no_grad():
        for t in expected:
            rt = found.get(t.name)
            ftype = None if rt is None else rt.tensor_type.name
            if ftype != t.ggml_type:
                checks.append(TensorCheck(t.name, t.source, t.ggml_type, ftype, t.fmt))
                continue
            values = gguf.quants.dequantize(np.asarray(rt.data), rt.tensor_type)
            sim = _simulated(model, base, t.source, t.layer)
            got = torch.from_numpy(np.array(values, dtype=np.float32)).reshape(sim.shape)
            if t.heads is not None:
                got = unpermute(got, t.heads)
            diff = float((got - sim).abs().max()) if sim.numel() else 0.0
            checks.append(TensorCheck(t.name, t.source, t.ggml_type, ftype, t.fmt, bool(torch.equal(got, sim)), diff, sim.numel()))
        names = {t.name for t in expected}
        for name, rt in found.items():
            if name not in names:
                checks.append(TensorCheck(name, "", None, rt.tensor_type.name))
    return GgufVerifyResult(str(p), tuple(checks), {"config": None if isinstance(config, QuantConfig) else str(config)})
