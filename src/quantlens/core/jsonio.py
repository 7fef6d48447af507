"""JSON files of quantlens: NaN-free, written atomically, read with a schema check.

Every file quantlens writes (``results.json``, ``fix.json``, ``additivity.json``,
``plan.json``, ``quant_config.json``) carries a ``"schema"`` string. JSON has no NaN/Inf, so
non-finite floats are written as ``null`` and read back as NaN (:func:`num`). A write goes to
``NAME.tmp`` first and is renamed over ``NAME``, so a killed process never leaves half a file;
a write that fails (the disk is full) removes its temporary file, leaves the old ``NAME`` as it
was and raises one line (:func:`write_error`).

Example:
    >>> d = clean({"a": float("nan"), "b": [1.0, float("inf")]})
    >>> d
    {'a': None, 'b': [1.0, None]}
    >>> load(dump({"schema": "x/v1", **d}), "x/v1", "thing")["a"] is None
    True
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar, Union

from quantlens.errors import QuantlensError

__all__ = ["clean", "num", "dump", "load", "write_atomic", "write_error", "NAN"]

NAN = float("nan")  # one NaN object: dataclasses holding it compare equal after a JSON round trip

Source = Union[str, os.PathLike]
_A = TypeVar("_A", bound="Artifact")


def clean(x: Any, str_keys: bool = False) -> Any:
    """``x`` with every non-finite float (also inside dicts, lists, tuples) replaced by ``None``,
    tuples made lists, and (``str_keys``) dict keys made strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {(str(k) if str_keys else k): clean(v, str_keys) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean(v, str_keys) for v in x]
    return x


def num(x: Any) -> float:
    """A float read back from JSON: ``None`` (a written NaN/Inf) becomes NaN."""
    return NAN if x is None else float(x)


def write_atomic(path: Source, text: str, fsync: bool = False) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, whole.

    The text goes to a temporary file beside ``path`` that is renamed over it; ``fsync``
    also flushes the file and its directory to disk (for checkpoints that must survive a crash).
    """
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            _write(f, text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        _unlink(tmp)
        raise write_error(p, e) from None
    if fsync:
        try:
            fd = os.open(p.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:  # pragma: no cover - directories cannot be fsynced everywhere
            pass


def _write(f: Any, text: str) -> None:
    f.write(text)


def _unlink(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def write_error(path: Source, e: OSError) -> QuantlensError:
    """The one line for a failed write of ``path``: what happened, and that the old file is intact.

    Example:
        >>> import errno
        >>> print(write_error("out/results.json", OSError(errno.ENOSPC, "No space left on device")))
        cannot write out/results.json: the disk is full (No space left on device); any earlier results.json is intact: free some space and rerun
    """
    name = Path(path).name
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        why = f"the disk is full ({e.strerror})"
        todo = "free some space and rerun"
    else:
        why = e.strerror or type(e).__name__
        todo = "check the directory and its permissions"
    return QuantlensError(f"cannot write {path}: {why}; any earlier {name} is intact: {todo}")


def dump(d: dict, path: Optional[Source] = None) -> str:
    """The JSON text of ``clean(d)``; also written atomically to ``path`` if given."""
    text = json.dumps(clean(d), indent=1)
    if path is not None:
        write_atomic(path, text)
    return text


class Artifact:
    """A result kept as one JSON file. The class gives ``to_dict`` / ``from_dict`` and, as class
    attributes, ``SCHEMA``, ``WHAT`` (how messages name the file), ``FILE`` (its name in a run's
    directory) and ``HINT`` (what to do when it is missing); the file I/O is here, once."""

    SCHEMA: ClassVar[str]
    WHAT: ClassVar[str]
    FILE: ClassVar[Optional[str]] = None
    HINT: ClassVar[str] = ""

    def to_dict(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[_A], d: dict) -> _A:  # pragma: no cover - interface
        raise NotImplementedError

    def to_json(self, path: Optional[Source] = None) -> str:
        """The JSON text; also written (atomically) to ``path`` if given."""
        return dump(self.to_dict(), path)

    @classmethod
    def from_json(cls: type[_A], source: Source) -> _A:
        """From JSON text, a path to the file, or the directory that holds it."""
        return cls.from_dict(load(source, cls.SCHEMA, cls.WHAT, cls.FILE, cls.HINT))


def load(source: Source, schema: str, what: str, default_name: Optional[str] = None, hint: str = "") -> dict:
    """The dict in ``source`` (JSON text, a file, or a directory holding ``default_name``).

    Raises :class:`QuantlensError` with one line when the file is missing (followed by
    ``hint``, what to do) or unreadable, is not a JSON object, or carries another ``schema``
    than ``schema``; ``what`` names the file for those messages.
    """
    s = str(source)
    if s.lstrip().startswith(("{", "[")):
        text, label = s, f"the {what} text"
    else:
        p = Path(source)
        if p.is_dir() and default_name is not None:
            p = p / default_name
        if not p.is_file():
            raise QuantlensError(f"{p} does not exist" + (f": {hint}" if hint else f" (expected a {what} file)"))
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise QuantlensError(f"cannot read {p} ({e}): check the path and its permissions") from None
        label = str(p)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise QuantlensError(f"{label} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise QuantlensError(f"{label} is not a JSON object (expected a quantlens {what})")
    if d.get("schema") != schema:
        raise QuantlensError(f"{label}: not a quantlens {what} (schema {d.get('schema')!r}, expected {schema!r})")
    return d
