"""A directory of checkpoints for resumable sweeps, written atomically.

Layout of ``DIR``::

    header.json        what the run is (model hash, data fingerprint, quantization, metric, ...)
    calibration.json   the activation quantizers, so a resumed run does not recalibrate
    serial.json        serial runs: the merged state after the last finished batch
    tasks/<key>.json   Ray runs: the state of each finished task

Every file is written to a temporary name, flushed to disk and renamed over the old one, so
a crash (even SIGKILL) leaves either the previous or the new version, never a torn file.
Opening a store whose header differs from the current run's raises a one-line
:class:`~quantlens.errors.QuantlensError` naming what differs: caches are never mixed; a cache
written by another quantlens version is refused the same way. The run that opens a store holds
its lock (``.quantlens.parallel.lock``, :mod:`quantlens.parallel.lock`) until it clears or closes it, so a second
run given the same ``--cache`` at the same time stops with one line.

Example:
    >>> store = CheckpointStore.open("out/.quantlens-cache", {"model": "ab12"})   # doctest: +SKIP
    >>> store.save("serial", {"batches_done": 3})                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Optional, Union

from quantlens.errors import QuantlensError
from quantlens.core.jsonio import write_atomic
from quantlens.parallel.lock import LOCK_NAME, DirLock

__all__ = ["CheckpointStore", "atomic_write_json", "resume_notice"]

_LABELS = {
    "model": "model weights",
    "reference": "reference model",
    "data": "data",
    "calib": "calibration data",
    "config": "quantization settings",
    "metric": "metric",
    "engine": "engine",
    "layers": "layer selection",
    "output_key": "output key",
    "device": "device",
    "plan": "backend or task plan",
}


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see the old file or the new, whole (and on disk)."""
    write_atomic(path, json.dumps(obj, allow_nan=True, separators=(",", ":")), fsync=True)


def resume_notice(store: Any, what: str) -> None:
    """Tell the user (as a :class:`QuantlensWarning`, one line) that a run resumes."""
    from quantlens.errors import QuantlensWarning

    warnings.warn(f"resuming from the cache in {store.root}: {what}", QuantlensWarning, stacklevel=3)


def _read(path: Path) -> Optional[Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise QuantlensError(f"cache file {path} is unreadable ({e}); rerun with --fresh to start over") from None


class CheckpointStore:
    """Checkpoints of one run in one directory (see module docstring)."""

    def __init__(self, root: Path, header: dict) -> None:
        self.root = root
        self.header = header
        self.lock: Optional[DirLock] = None

    @classmethod
    def open(cls, root: Union[str, os.PathLike], header: dict, fresh: bool = False) -> "CheckpointStore":
        """Open (or create) the store and lock it for this run; refuse one made by a different
        run or another quantlens version unless ``fresh``, and one another live run holds."""
        path = Path(root)
        if path.exists() and not path.is_dir():
            raise QuantlensError(f"--cache {path}: exists and is not a directory")
        if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()) and not (path / "header.json").exists():
            raise QuantlensError(f"--cache {path}: a non-empty directory that is not a quantlens cache; choose another")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QuantlensError(f"--cache {path}: cannot create it ({e.strerror})") from None
        store = cls(path, header)
        store.lock = DirLock(path, "--cache").acquire()
        try:
            if fresh:
                store._empty()
            (path / "tasks").mkdir(exist_ok=True)
            old = _read(path / "header.json")
            if old is None:
                atomic_write_json(path / "header.json", header)
            else:
                _check_header(path, old, header)
        except BaseException:
            store.close()
            raise
        return store

    def load(self, name: str) -> Optional[Any]:
        """The JSON object saved under ``name``, or ``None``."""
        return _read(self.root / f"{name}.json")

    def save(self, name: str, obj: Any) -> None:
        atomic_write_json(self.root / f"{name}.json", obj)

    def load_task(self, key: str) -> Optional[Any]:
        return _read(self.root / "tasks" / f"{key}.json")

    def save_task(self, key: str, obj: Any) -> None:
        atomic_write_json(self.root / "tasks" / f"{key}.json", obj)

    def close(self) -> None:
        """Release this run's lock (the checkpoints stay, for a later run to resume)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _empty(self) -> None:
        for p in self.root.iterdir():
            if p.name == LOCK_NAME:
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink()

    def clear(self) -> None:
        """Remove the cache directory (only if it is a quantlens cache), under its lock: a cache
        another live run has taken meanwhile is left alone."""
        if not self.root.is_dir():
            self.close()
            return
        if self.lock is None:
            try:
                self.lock = DirLock(self.root, "--cache").acquire()
            except QuantlensError:
                return
        if not (self.root / "header.json").exists() and any(p.name not in ("tasks", LOCK_NAME) for p in self.root.iterdir()):
            self.close()
            raise QuantlensError(f"--cache {self.root}: not a quantlens cache; not removing it")
        self._empty()
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)


def _check_header(path: Path, old: dict, header: dict) -> None:
    """One line if the cache in ``path`` (header ``old``) was made by another version or another run."""
    if old.get("version") != header.get("version"):
        by = f"quantlens {old['version']}" if old.get("version") else "an older quantlens version"
        raise QuantlensError(
            f"the cache in {path} was written by {by}, this is quantlens {header.get('version')}: rerun with --fresh to "
            "discard it, or choose another --cache directory"
        )
    if old != header:
        diff = [k for k in sorted(set(old) | set(header)) if old.get(k) != header.get(k)]
        what = ", ".join(_LABELS.get(k, k) for k in diff)
        raise QuantlensError(
            f"the cache in {path} was made by a run with a different {what}; "
            "rerun with --fresh to discard it, or choose another --cache directory"
        )
