"""A directory of checkpoints for resumable sweeps, written atomically.

Layout of ``DIR``::

    header.json        what the run is (model hash, data fingerprint, quantization, metric, ...)
    calibration.json   the activation quantizers, so a resumed run does not recalibrate
    serial.json        serial runs: the merged state after the last finished batch
    tasks/<key>.json   Ray runs: the state of each finished task

Every file is written to a temporary name, flushed to disk and renamed over the old one, so
a crash (even SIGKILL) leaves either the previous or the new version, never a torn file.
Opening a store whose header differs from the current run's raises a one-line
:class:`~quantlens.errors.QuantlensError` naming what differs: caches are never mixed.

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

from ..errors import QuantlensError
from ..jsonio import write_atomic

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
    from ..errors import QuantlensWarning

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

    @classmethod
    def open(cls, root: Union[str, os.PathLike], header: dict, fresh: bool = False) -> "CheckpointStore":
        """Open (or create) the store; refuse one made by a different run unless ``fresh``."""
        path = Path(root)
        if fresh and path.exists():
            cls(path, header).clear()
        if path.exists() and not path.is_dir():
            raise QuantlensError(f"--cache {path}: exists and is not a directory")
        if path.is_dir() and any(path.iterdir()) and not (path / "header.json").exists():
            raise QuantlensError(f"--cache {path}: a non-empty directory that is not a quantlens cache; choose another")
        try:
            (path / "tasks").mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise QuantlensError(f"--cache {path}: cannot create it ({e.strerror})") from None
        store = cls(path, header)
        old = _read(path / "header.json")
        if old is None:
            atomic_write_json(path / "header.json", header)
        elif old != header:
            diff = [k for k in sorted(set(old) | set(header)) if old.get(k) != header.get(k)]
            what = ", ".join(_LABELS.get(k, k) for k in diff)
            raise QuantlensError(
                f"the cache in {path} was made by a run with a different {what}; "
                "rerun with --fresh to discard it, or choose another --cache directory"
            )
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

    def clear(self) -> None:
        """Remove the cache directory (only if it is a quantlens cache)."""
        if not self.root.is_dir():
            return
        if not (self.root / "header.json").exists() and any(p.name != "tasks" for p in self.root.iterdir()):
            raise QuantlensError(f"--cache {self.root}: not a quantlens cache; not removing it")
        shutil.rmtree(self.root, ignore_errors=True)
