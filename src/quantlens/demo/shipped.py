"""The demo models' shipped files: package data, so every machine analyses the same model.

Training is seeded, but another CPU or library build rounds floats differently and a few
epochs amplify it, so the demos do not train: each loads
``quantlens/demo/weights/NAME.safetensors`` (a float32 state dict, trained once with the demo's
own training code and committed). The file's metadata records how and where it was trained;
retraining (``model(retrain=True)``, ``quantlens demo --retrain``) reproduces it only on that
CPU and library build, and says so. The LM demo's text ships beside it (:func:`read_json`).

Regenerate the files (maintainers; commit the result, then re-measure the demo numbers in
README.md and docs/): ``python scripts/ship_demo_weights.py digits lm``.

Example:
    >>> from quantlens.demo import digits, shipped
    >>> net = shipped.load(digits.DigitsCNN(), digits.TRAIN_VERSION)
    >>> shipped.metadata(digits.TRAIN_VERSION)["trained_by"]
    'quantlens.demo.digits._train(epochs=15, seed=0)'
"""

from __future__ import annotations

import json
import platform
import struct
import sys
import warnings
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Optional, TypeVar

import torch
import torch.nn as nn

from quantlens.errors import QuantlensError, QuantlensWarning

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["weights_file", "load", "save", "metadata", "warn_retrain", "read_json", "write_json"]

M = TypeVar("M", bound=nn.Module)


def weights_file(name: str) -> Traversable:
    """The shipped ``NAME.safetensors`` inside the installed package."""
    return files("quantlens.demo").joinpath("weights", f"{name}.safetensors")


def _read(name: str, path: Optional[Path]) -> bytes:
    src = Path(path) if path is not None else weights_file(name)
    try:
        return src.read_bytes()
    except OSError as e:
        raise QuantlensError(f"the demo weights {src} cannot be read ({e.strerror or e}); reinstall quantlens, "
                             "or pass retrain=True (--retrain) to train them") from None


def read_json(file: str) -> dict:
    """The shipped gzipped JSON ``weights/FILE`` (the LM demo's text)."""
    import gzip

    try:
        return json.loads(gzip.decompress(files("quantlens.demo").joinpath("weights", file).read_bytes()))
    except OSError as e:
        raise QuantlensError(f"the demo file {file} cannot be read ({e.strerror or e}); reinstall quantlens") from None


def write_json(obj: dict, path: Path) -> Path:
    """Write ``obj`` as gzipped JSON, byte-stable (no time stamp in the gzip header)."""
    import gzip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(obj, ensure_ascii=False).encode("utf-8"), 9, mtime=0))
    return path


def load(net: M, name: str, path: Optional[Path] = None) -> M:
    """``net`` (eval mode) with the state of the shipped ``name`` (or of the safetensors file ``path``)."""
    from safetensors.torch import load as load_bytes

    net.load_state_dict(load_bytes(_read(name, path)))  # strict: every key, every shape
    return net.eval()


def metadata(name: str, path: Optional[Path] = None) -> dict[str, str]:
    """The string metadata of a safetensors file: how and where its weights were trained."""
    data = _read(name, path)
    (n,) = struct.unpack("<Q", data[:8])
    return dict(json.loads(data[8 : 8 + n]).get("__metadata__", {}))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save(net: nn.Module, path: Path, trained_by: str, threads: int) -> Path:
    """Write ``net``'s state dict to ``path`` (float tensors as float32) with the training
    environment in its metadata (the command, torch and transformers versions, CPU, threads)."""
    from safetensors.torch import save_file

    state = {k: (v.float() if v.is_floating_point() else v).detach().contiguous().clone()
             for k, v in net.state_dict().items()}
    meta = {"trained_by": trained_by, "torch": torch.__version__, "python": platform.python_version(),
            "cpu": _cpu(), "threads": str(threads)}
    if "transformers" in sys.modules:
        meta["transformers"] = sys.modules["transformers"].__version__
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return path


def warn_retrain(name: str) -> None:
    """One line: a retrained model is the shipped one only where that one was trained."""
    try:
        m = metadata(name)
        libs = ", ".join(f"{lib} {m[lib]}" for lib in ("torch", "transformers") if lib in m)
        threads = m.get("threads", "?")
        where = f" ({libs}, {m.get('cpu', '?')}, {threads} thread{'' if threads == '1' else 's'})"
    except (QuantlensError, ValueError, KeyError):
        where = ""
    warnings.warn(f"training {name} anew: this reproduces the shipped weights only on the CPU and library build "
                  f"they were trained on{where}", QuantlensWarning, stacklevel=3)
