"""Progress reporting: a rich progress bar with an ETA, or nothing.

``make_progress(enabled, total, label)`` returns an object with ``advance(n)``,
``set_total(n)`` and ``close()``; when disabled they are no-ops.
"""

from __future__ import annotations

import sys
from typing import Optional

__all__ = ["make_progress", "Progress"]


class Progress:
    def advance(self, n: int = 1) -> None:
        pass

    def set_total(self, total: int) -> None:
        """Correct the number of steps once it is known exactly."""

    def close(self) -> None:
        pass


class _RichProgress(Progress):
    def __init__(self, total: Optional[int], label: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import (
            Progress as RP,
        )

        self._p = RP(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self._p.start()
        self._task = self._p.add_task(label, total=total)

    def advance(self, n: int = 1) -> None:
        self._p.advance(self._task, n)

    def set_total(self, total: int) -> None:
        self._p.update(self._task, total=total)

    def close(self) -> None:
        self._p.stop()


def make_progress(enabled: bool, total: Optional[int], label: str = "sweep") -> Progress:
    return _RichProgress(total, label) if enabled else Progress()
