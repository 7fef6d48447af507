"""Load user objects from ``MOD:FN`` specs (the CLI's ``--model`` / ``--data``).

``MOD`` is an importable module name (the current directory is on the path) or a path to a
``.py`` file; ``FN`` is a function in it, called with no arguments. ``--model`` also takes a
``.onnx`` or ``.pt2`` file (:mod:`quantlens.data.model_files`).

Example:
    >>> load_callable("math:pi")    # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Callable

from torch import nn

from quantlens.errors import QuantlensError

__all__ = ["load_callable", "load_model", "load_data"]


def _import(mod: str) -> Any:
    if mod.endswith(".py") or os.sep in mod or "/" in mod:
        path = Path(mod)
        if not path.is_file():
            raise QuantlensError(f"{mod}: no such file")
        name = f"_quantlens_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent.resolve()))
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise QuantlensError(f"{mod}: importing it failed with {type(e).__name__}: {e}") from None
        return module
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        raise QuantlensError(f"cannot import module {mod!r} ({e}); give an importable module or a path to a .py file") from None
    except Exception as e:
        raise QuantlensError(f"importing {mod!r} failed with {type(e).__name__}: {e}") from None


def load_callable(spec: str, option: str = "--model") -> Callable[[], Any]:
    """The function named by ``MOD:FN``."""
    if ":" not in spec or spec.endswith(":") or spec.startswith(":"):
        raise QuantlensError(f"{option} {spec!r}: expected MOD:FN, e.g. mymodels.py:build or mypkg.models:build")
    mod, _, fn = spec.rpartition(":")
    module = _import(mod)
    obj = getattr(module, fn, None)
    if obj is None:
        raise QuantlensError(f"{option} {spec!r}: module {mod!r} has no attribute {fn!r}")
    if not callable(obj):
        raise QuantlensError(f"{option} {spec!r}: {fn!r} is not callable")
    return obj


def _call(spec: str, option: str) -> Any:
    fn = load_callable(spec, option)
    try:
        return fn()
    except QuantlensError:
        raise
    except Exception as e:
        raise QuantlensError(f"{option} {spec!r}: calling it raised {type(e).__name__}: {e}") from None


def load_model(spec: str, option: str = "--model") -> nn.Module:
    """Call ``MOD:FN`` and check it returned an ``nn.Module``; or load a ``.onnx`` / ``.pt2`` file."""
    from quantlens.data.model_files import MODEL_SUFFIXES, load_model_file

    if spec.endswith(MODEL_SUFFIXES):
        return load_model_file(spec)
    obj = _call(spec, option)
    if not isinstance(obj, nn.Module):
        raise QuantlensError(f"{option} {spec!r} returned {type(obj).__name__}, expected a torch.nn.Module")
    return obj


def load_data(spec: str, option: str = "--data") -> Any:
    """Call ``MOD:FN`` and check it returned a re-iterable of batches."""
    obj = _call(spec, option)
    try:
        it = iter(obj)  # once: a DataLoader starts its workers on each iter()
    except TypeError:
        raise QuantlensError(f"{option} {spec!r} returned {type(obj).__name__}, expected an iterable of (inputs, labels) batches") from None
    import torch

    if isinstance(obj, torch.Tensor):
        raise QuantlensError(f"{option} {spec!r} returned a Tensor; return an iterable of (inputs, labels) batches")
    if it is obj:  # a generator: materialise it once (data for a sweep is re-read)
        obj = list(obj)
    return obj
