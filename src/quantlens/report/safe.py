"""Escaping for everything that comes from the user's model (layer names, model name, metric).

Three contexts, three helpers:

* :func:`esc` -- HTML text and attribute values (``&``, ``<``, ``>``, quotes).
* :func:`plot_text` -- strings that plotly.js renders (tick labels, hover, titles). plotly.js
  parses a few tags (``<b>``, ``<a href>``) and decodes entities, then sets the result as text,
  so ``&lt;img&gt;`` shows as ``<img>`` and never becomes an element.
* :func:`script_json` -- JSON placed inside ``<script>``: ``<``, ``>``, ``&`` and U+2028/9 are
  written as ``\\uXXXX`` so neither ``</script>`` nor ``<!--`` can appear; NaN/Inf become null.

Example:
    >>> esc('<img src=x onerror=alert(1)>')
    '&lt;img src=x onerror=alert(1)&gt;'
    >>> script_json({"n": "</script><!--"})
    '{"n": "\\\\u003c/script\\\\u003e\\\\u003c!--"}'
"""

from __future__ import annotations

import html
import json
from typing import Any

from quantlens.core.jsonio import clean

__all__ = ["esc", "plot_text", "script_json", "clean_json"]

_SCRIPT_SWAPS = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def esc(value: Any) -> str:
    """``str(value)`` escaped for HTML text or a quoted attribute."""
    return html.escape(str(value), quote=True)


def plot_text(value: Any) -> str:
    """``str(value)`` escaped for plotly.js text (shown literally, never parsed as a tag)."""
    return html.escape(str(value), quote=False)


def clean_json(x: Any) -> Any:
    """Replace NaN/Inf by None, tuples by lists and keys by strings, recursively (JSON has none of them)."""
    return clean(x, str_keys=True)


def script_json(obj: Any) -> str:
    """JSON text that is safe to place verbatim inside a ``<script>`` element."""
    text = json.dumps(clean_json(obj), allow_nan=False, ensure_ascii=False)
    for raw, safe in _SCRIPT_SWAPS:
        text = text.replace(raw, safe)
    return text
