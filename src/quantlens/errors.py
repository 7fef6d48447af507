"""User-facing errors.

Every error a user can cause (a bad ``--model``, empty data, bits out of range, ...) is a
:class:`QuantlensError`. The CLI prints its message as one line and exits with status 2;
the Python API lets it propagate. Anything else is a bug in quantlens.
"""

from __future__ import annotations

__all__ = ["QuantlensError", "QuantlensWarning"]


class QuantlensError(Exception):
    """An error caused by the user's input, with a message that says what to do."""


class QuantlensWarning(UserWarning):
    """A one-line notice (e.g. the hooks fallback) that the CLI prints as a warning."""
