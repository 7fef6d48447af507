"""One capture per model: the capture cache, in this process and (``--capture-cache DIR``) on disk.

A capture is keyed by what decides it: ``key = BLAKE2b(header)`` with ``header`` = the quantlens
and torch versions, the capture method asked for, the model's weights
(:func:`~quantlens.core.fingerprint.model_hash`, the resumable cache's fingerprint), its
structure (:func:`~quantlens.core.fingerprint.structure_hash`: classes, their source files,
attributes, a Hugging Face config) and the sample's structure
(:func:`~quantlens.core.fingerprint.sample_signature`: argument tree, dtypes, shapes,
devices; not values). Any change to one of them is another key, so a stale capture is never
found; it is captured anew.

* In the process: the last :data:`MEMORY_ENTRIES` captures (or capture failures) are kept; each
  lookup hands out a deep copy (:func:`copy.deepcopy` of the :class:`LayerGraph`), so a fix that
  changes its graph changes no other copy and not the kept one. With ``share_weights=True`` (a
  sweep, which only reads its weights) the copy's parameters and buffers are new tensors on the
  kept capture's storage (:func:`share_weights`): a copy costs no weight memory, even the first
  (the kept capture and the copy are one set of weights, not two). An in-place change of a
  shared weight would change the kept capture: each lookup checks that the kept weights are
  unchanged since they were kept (:func:`still_shared`: their version counters, which every
  in-place op bumps) and captures the model anew if not.
* On disk (:func:`use_capture_cache`): a ``torch.export`` capture's program is saved as
  ``DIR/<key>.pt2`` (``torch.export.save``) beside ``DIR/<key>.json`` (its header), each written
  to a temporary name and renamed; a later process loads the program and rebuilds the graph from
  it (:func:`~quantlens.graph.export.program_graph`), skipping the export. An fx capture is not
  saved (it takes well under a second). An entry whose header differs from the one asked for
  (another quantlens or torch version, other weights, ...) is never used: a one-line
  :class:`~quantlens.errors.QuantlensWarning` says what differs and that the model is captured
  anew, and the new entry replaces the one of an older version.

Example:
    >>> with use_capture_cache("out/.capture-cache"):            # doctest: +SKIP
    ...     g1 = capture(model, sample)                           # exported, saved
    ...     g2 = capture(model, sample)                           # a copy of the kept capture
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import nn

from quantlens._version import __version__
from quantlens.core.fingerprint import model_hash, sample_signature, structure_hash
from quantlens.core.jsonio import write_atomic
from quantlens.core.quiet import quiet
from quantlens.errors import QuantlensError, QuantlensWarning
from quantlens.graph.layers import LayerGraph
from quantlens.graph.shared import weights_memo

__all__ = ["CaptureCache", "CaptureStats", "capture_header", "capture_cache", "use_capture_cache", "MEMORY_ENTRIES",
           "SCHEMA", "share_weights", "still_shared", "weight_versions", "weights_memo"]

SCHEMA = "quantlens/capture-cache-v1"
MARKER = "capture-cache.json"
MEMORY_ENTRIES = 2  # a captured LLM holds a copy of its weights: keep few

_LABELS = {
    "version": "quantlens version",
    "torch": "torch version",
    "method": "capture method",
    "model": "model weights",
    "structure": "model structure or code",
    "sample": "sample's structure (argument names, dtypes, shapes, device)",
}

Built = tuple[LayerGraph, Optional[torch.export.ExportedProgram]]


def capture_header(model: nn.Module, sample: Any, method: str) -> dict[str, Optional[str]]:
    """What a capture of ``model`` on ``sample`` by ``method`` depends on (see module docstring)."""
    return {
        "schema": SCHEMA,
        "version": __version__,
        "torch": torch.__version__,
        "method": method,
        "model": model_hash(model),
        "structure": structure_hash(model),
        "sample": sample_signature(sample) if sample is not None else None,
    }


def _key(header: dict) -> str:
    return hashlib.blake2b(json.dumps(header, sort_keys=True).encode(), digest_size=16).hexdigest()


@dataclass
class CaptureStats:
    """What the cache did in this process: ``built`` captures made, ``memory`` and ``disk`` hits."""

    built: int = 0
    memory: int = 0
    disk: int = 0
    saved: int = 0
    stale: int = 0  # kept captures whose weights a shared copy changed: captured anew


class CaptureCache:
    """Captures by key, in memory (the last ``entries``) and optionally in ``directory``."""

    def __init__(self, directory: Union[str, os.PathLike, None] = None, entries: int = MEMORY_ENTRIES) -> None:
        self.directory = _open_dir(Path(directory)) if directory is not None else None
        self.entries = entries
        self.kept: OrderedDict[str, Union[LayerGraph, Exception]] = OrderedDict()
        self.versions: dict[str, dict[str, int]] = {}  # key -> the kept weights' version counters
        self.stats = CaptureStats()

    def get(self, model: nn.Module, sample: Any, method: str, build: Callable[[], Built],
            failures: tuple[type[BaseException], ...] = (QuantlensError,), share: bool = False) -> LayerGraph:
        """A copy of the capture of ``model`` on ``sample`` by ``method``; ``build()`` makes it
        (``(graph, program or None)``) when neither memory nor the directory has it. A failure
        of a type in ``failures`` (the model cannot be captured) is kept too, and raised again.
        ``share``: the copy shares the kept capture's weights (:func:`share_weights`; for a caller
        that never changes them in place)."""
        header = capture_header(model, sample, method)
        key = _key(header)
        got = self.kept.get(key)
        if isinstance(got, LayerGraph) and not still_shared(got, self.versions.get(key, {})):
            del self.kept[key]  # a shared copy changed the kept weights in place: capture anew
            self.versions.pop(key, None)
            self.stats.stale += 1
            got = None
        if got is not None:
            self.kept.move_to_end(key)
            self.stats.memory += 1
        else:
            got = self._load(key, header, type(model).__name__) if self.directory is not None else None
            if got is None:
                try:
                    graph, program = build()
                except failures as e:
                    self._keep(key, e)
                    raise
                self.stats.built += 1
                if program is not None and self.directory is not None:
                    self._save(key, header, program)
                got = graph
            self._keep(key, got)
        if isinstance(got, Exception):
            raise got
        return share_weights(got) if share else _deepcopy(got)

    def clear(self) -> None:
        """Forget the captures kept in memory (the directory stays)."""
        self.kept.clear()
        self.versions.clear()

    def _keep(self, key: str, value: Union[LayerGraph, Exception]) -> None:
        if key not in self.kept and isinstance(value, LayerGraph):
            self.versions[key] = weight_versions(value)
        self.kept[key] = value
        self.kept.move_to_end(key)
        while len(self.kept) > self.entries:
            old, _ = self.kept.popitem(last=False)
            self.versions.pop(old, None)

    # ---- disk ------------------------------------------------------------------------------
    def _load(self, key: str, header: dict, class_name: str) -> Optional[LayerGraph]:
        from quantlens.graph.export import program_graph

        assert self.directory is not None
        meta, prog = self.directory / f"{key}.json", self.directory / f"{key}.pt2"
        if not (meta.exists() and prog.exists()):
            _explain_miss(self.directory, header)
            return None
        try:
            old = json.loads(meta.read_text())
            if old != header:  # a key collision or an edited file: never use it
                raise ValueError("its header does not match its name")
            with quiet():
                graph = program_graph(torch.export.load(prog), class_name)
        except Exception as e:
            warnings.warn(
                f"the capture cache entry {prog} is unreadable ({type(e).__name__}: {_first_line(e)}); capturing the "
                "model anew and replacing it", QuantlensWarning, stacklevel=4)
            return None
        self.stats.disk += 1
        return graph

    def _save(self, key: str, header: dict, program: torch.export.ExportedProgram) -> None:
        assert self.directory is not None
        prog = self.directory / f"{key}.pt2"
        tmp = prog.with_name(f".{prog.name}.{os.getpid()}.tmp")
        try:
            with quiet():
                torch.export.save(program, tmp)
            os.replace(tmp, prog)
            write_atomic(self.directory / f"{key}.json", json.dumps(header, sort_keys=True), fsync=True)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            warnings.warn(
                f"cannot save the capture to the capture cache {self.directory} ({type(e).__name__}: {_first_line(e)}); "
                "the next command will capture the model again", QuantlensWarning, stacklevel=4)
            return
        for old in _replaced(self.directory, header, key):
            for p in (old.with_suffix(".pt2"), old):
                p.unlink(missing_ok=True)
        self.stats.saved += 1


def _weights(graph: LayerGraph) -> Iterator[tuple[str, torch.Tensor]]:
    yield from graph.gm.named_parameters(remove_duplicate=False)
    yield from graph.gm.named_buffers(remove_duplicate=False)


def weight_versions(graph: LayerGraph) -> dict[str, int]:
    """``name -> version counter`` of every parameter and buffer of ``graph`` (an in-place op bumps it)."""
    return {name: t._version for name, t in _weights(graph)}


def still_shared(graph: LayerGraph, versions: dict[str, int]) -> bool:
    """True if ``graph``'s parameters and buffers are the ones ``versions`` (:func:`weight_versions`)
    recorded, none changed in place since: the same names, the same version counters."""
    now = weight_versions(graph)
    return now == versions


def _deepcopy(graph: LayerGraph, memo: Optional[dict[int, Any]] = None) -> LayerGraph:
    with warnings.catch_warnings():  # copying an export capture's pytree specs warns (torch 2.13)
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(graph, memo)


def share_weights(graph: LayerGraph) -> LayerGraph:
    """A deep copy of ``graph`` (its own modules, graph and layers) whose parameters and buffers are
    new tensors on ``graph``'s storage (``nn.Parameter(p.detach())``, ``b.detach()``): no weight is
    copied. Replacing a weight of the copy (``module.weight = ...``, ``.to(device)``,
    ``requires_grad_``) leaves ``graph`` as it is; an in-place change (``weight.mul_(s)``) changes
    both, and bumps their shared version counter (:func:`still_shared` sees it).

    Example:
        >>> import torch.nn as nn                                                # doctest: +SKIP
        >>> g = capture(nn.Linear(2, 2)); c = share_weights(g)                   # doctest: +SKIP
        >>> c.gm is g.gm, next(c.gm.parameters()).data_ptr() == next(g.gm.parameters()).data_ptr()  # doctest: +SKIP
        (False, True)
    """
    return _deepcopy(graph, weights_memo(graph.gm))


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _open_dir(path: Path) -> Path:
    """``path`` as a capture cache directory (made if absent); one line if it cannot be one."""
    if path.exists() and not path.is_dir():
        raise QuantlensError(f"--capture-cache {path}: exists and is not a directory; choose another path")
    if path.is_dir() and any(path.iterdir()) and not (path / MARKER).exists():
        raise QuantlensError(f"--capture-cache {path}: a non-empty directory that is not a quantlens capture cache; "
                             "choose another")
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not (path / MARKER).exists():
            write_atomic(path / MARKER, json.dumps({"schema": SCHEMA}))
    except OSError as e:
        raise QuantlensError(f"--capture-cache {path}: cannot create it ({e.strerror})") from None
    return path


def _headers(directory: Path) -> Iterator[tuple[Path, dict]]:
    for p in sorted(directory.glob("*.json")):
        if p.name == MARKER:
            continue
        try:
            old = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(old, dict):
            yield p, old


def _same_model(old: dict, header: dict) -> bool:
    return all(old.get(k) == header.get(k) for k in ("method", "model", "structure", "sample"))


def _replaced(directory: Path, header: dict, key: str) -> list[Path]:
    """Entries of the same capture by another quantlens or torch version: the new entry replaces them."""
    return [p for p, old in _headers(directory) if p.stem != key and _same_model(old, header)]


def _explain_miss(directory: Path, header: dict) -> None:
    """Say in one line why the directory's entries do not serve this capture: what differs in
    the nearest one (fewest differing fields); nothing for an empty directory."""
    entries = [old for _, old in _headers(directory)]
    if not entries:
        return
    diffs = [[k for k in _LABELS if old.get(k) != header.get(k)] for old in entries]
    i = min(range(len(diffs)), key=lambda j: len(diffs[j]))
    if set(diffs[i]) <= {"version", "torch"}:
        what = " and ".join(f"{_LABELS[k]} {entries[i].get(k)} (this is {header.get(k)})" for k in diffs[i])
        msg = f"the capture cache {directory} holds this model's capture made with {what}: ignoring it, " \
              "capturing anew and replacing it"
    else:
        msg = (f"the capture cache {directory} holds no capture of this model (the nearest of its {len(entries)} "
               f"entries has another {', '.join(_LABELS[k] for k in diffs[i])}): capturing it and adding it")
    warnings.warn(msg, QuantlensWarning, stacklevel=5)


_CACHE = CaptureCache()


def capture_cache() -> CaptureCache:
    """The process's capture cache (what :func:`~quantlens.graph.capture.capture` uses)."""
    return _CACHE


@contextlib.contextmanager
def use_capture_cache(directory: Union[str, os.PathLike, None]) -> Iterator[CaptureCache]:
    """Within the block, captures are also saved to and loaded from ``directory`` (``None``:
    memory only). The captures kept in memory stay; the directory setting is restored on exit."""
    before = _CACHE.directory
    _CACHE.directory = _open_dir(Path(directory)) if directory is not None else None
    try:
        yield _CACHE
    finally:
        _CACHE.directory = before
