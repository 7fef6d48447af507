"""One run at a time per output or cache directory: a lock file holding the holder's pid.

``DirLock(path, "--out")`` creates ``path/.quantlens.parallel.lock`` exclusively (``O_CREAT | O_EXCL``)
and writes this process's pid into it. A second run that finds the file reads the pid: if
that process is alive, it stops with one line (:class:`~quantlens.errors.QuantlensError`)
naming the directory and the pid; if it is dead (a crashed or killed run), the stale lock is
taken over. :meth:`DirLock.release` removes the file only while it still holds this pid.
Locks taken with :func:`hold` are released when the process exits, or by :func:`release_all`.

Example:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with DirLock(d, "--out"):
    ...     DirLock(d, "--out").acquire()
    Traceback (most recent call last):
    ...
    quantlens.errors.QuantlensError: --out ... is in use by another quantlens run (pid ...): wait for it to finish or choose another directory
"""

from __future__ import annotations

import atexit
import errno
import os
from pathlib import Path
from typing import Optional, Union

from quantlens.errors import QuantlensError

__all__ = ["LOCK_NAME", "DirLock", "hold", "release_all", "pid_alive"]

LOCK_NAME = ".quantlens.parallel.lock"
_HELD: list["DirLock"] = []


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class DirLock:
    """An exclusive lock on a directory for this process (see module docstring)."""

    def __init__(self, directory: Union[str, os.PathLike], what: str) -> None:
        self.dir = Path(directory)
        self.path = self.dir / LOCK_NAME
        self.what = what
        self.held = False

    def _holder(self) -> Optional[int]:
        try:
            return int(self.path.read_text().strip() or "0")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return 0  # unreadable or half-written: treated as stale

    def acquire(self) -> "DirLock":
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = self._holder()
                if pid is None:
                    continue  # released meanwhile: try again
                if pid_alive(pid):
                    raise QuantlensError(
                        f"{self.what} {self.dir} is in use by another quantlens run (pid {pid}): wait for it to finish or choose "
                        "another directory"
                    ) from None
                try:  # a dead run's lock: take it over
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            except OSError as e:
                raise QuantlensError(f"{self.what} {self.dir}: cannot create a lock file ({os.strerror(e.errno or errno.EIO)})") from None
            try:
                os.write(fd, str(os.getpid()).encode())
            finally:
                os.close(fd)
            self.held = True
            return self
        raise QuantlensError(f"{self.what} {self.dir}: another run keeps taking the lock; wait for it to finish")

    def release(self) -> None:
        if self.held and self._holder() == os.getpid():
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.held = False
        if self in _HELD:
            _HELD.remove(self)

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold(directory: Union[str, os.PathLike], what: str) -> DirLock:
    """Acquire a lock kept until :func:`release_all` or the process exits."""
    for lock in _HELD:
        if lock.dir.resolve() == Path(directory).resolve():
            return lock
    lock = DirLock(directory, what).acquire()
    _HELD.append(lock)
    return lock


def release_all() -> None:
    for lock in list(_HELD):
        lock.release()


atexit.register(release_all)
