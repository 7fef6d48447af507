"""Batches in, network output out: the small adapters between user data and the engine.

A batch is normalized to ``(Inputs, labels)`` (labels may be ``None``):

* a bare tensor: the inputs, no labels;
* ``(inputs, labels)``: ``inputs`` is a tensor, a tuple/list of tensors (positional
  arguments) or a mapping (keyword arguments);
* a mapping (a tokenizer's ``BatchEncoding``, a plain dict): keyword arguments; its
  ``labels`` key, if any, is taken out as the labels (the Hugging Face convention).

Non-tensor keyword values (``output_hidden_states=False``) are passed through unchanged.
The network's output ``y`` is the output itself if it is a tensor; otherwise the value at
``key`` (a dict key, attribute or index) if given, else the first tensor found in a
tuple / list / dict / HF-style output object.

Example:
    >>> import torch
    >>> inputs, labels = normalize_batch({"input_ids": torch.ones(2, 5, dtype=torch.long), "labels": torch.zeros(2)})
    >>> inputs.batch_size, sorted(inputs.kwargs), labels.shape
    (2, ['input_ids'], torch.Size([2]))
    >>> extract_output({"logits": torch.ones(1, 2), "aux": torch.zeros(1)}).shape
    torch.Size([1, 2])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional, Union

import torch
from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.core.inputs import Inputs, as_inputs

__all__ = [
    "Inputs",
    "as_inputs",
    "Batch",
    "normalize_batch",
    "iterate",
    "extract_output",
    "count_batches",
    "check_reiterable",
    "attention_mask",
    "input_ids",
    "token_labels",
    "IGNORE_INDEX",
]

IGNORE_INDEX = -100  # a label that is not counted (the Hugging Face convention)


Batch = tuple[Inputs, Optional[Tensor]]


def _as_labels(labels: Any, index: int) -> Optional[Tensor]:
    if labels is None or isinstance(labels, Tensor):
        return labels
    try:
        return torch.as_tensor(labels)
    except Exception:
        raise QuantlensError(f"batch {index}: labels must be a tensor or None, got {type(labels).__name__}") from None


def _as_inputs(inputs: Any, index: int) -> Inputs:
    if isinstance(inputs, Tensor):
        return Inputs((inputs,))
    if isinstance(inputs, Mapping):
        kwargs = {str(k): v for k, v in inputs.items()}
        for k, v in kwargs.items():
            if _numbers(v):
                raise QuantlensError(
                    f"batch {index}: {k!r} is a {type(v).__name__} of numbers where the model needs a tensor: build the "
                    "batch with tensors (a tokenizer's return_tensors='pt', or torch.tensor(...))"
                )
        if not any(isinstance(v, Tensor) for v in kwargs.values()):
            raise QuantlensError(f"batch {index}: a mapping batch needs at least one tensor value, got keys {sorted(kwargs)}")
        return Inputs((), kwargs)
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, Tensor) for t in inputs):
        return Inputs(tuple(inputs))
    if isinstance(inputs, (tuple, list)):
        bad = next((type(t).__name__ for t in inputs if not isinstance(t, Tensor)), "nothing")
        raise QuantlensError(
            f"batch {index}: positional inputs must all be tensors, got a {bad}; pass other values as a mapping "
            "of keyword arguments ({'input_ids': ..., 'use_cache': False})"
        )
    raise QuantlensError(
        f"batch {index}: inputs must be a tensor, a tuple of tensors or a mapping of keyword arguments, "
        f"got {type(inputs).__name__}"
    )


def _numbers(v: Any) -> bool:
    """Whether ``v`` is a (nested) list or tuple of plain numbers: tensor data not made a tensor."""
    if not isinstance(v, (list, tuple)) or not v:
        return False
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) or _numbers(x) for x in v)


def normalize_batch(batch: Any, index: int = 0) -> Batch:
    """``(Inputs, labels or None)`` from one element of the user's data (see module docstring)."""
    if isinstance(batch, Inputs):
        return batch, None
    if isinstance(batch, Tensor):
        return Inputs((batch,)), None
    if isinstance(batch, Mapping):
        rest = {k: v for k, v in batch.items() if k != "labels"}
        return _as_inputs(rest, index), _as_labels(batch.get("labels"), index)
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, labels = batch
        if isinstance(inputs, Inputs):
            return inputs, _as_labels(labels, index)
        return _as_inputs(inputs, index), _as_labels(labels, index)
    raise QuantlensError(
        f"batch {index}: each batch must be (inputs, labels), a tensor of inputs or a mapping of keyword "
        f"arguments, got {type(batch).__name__}"
    )


def iterate(data: Iterable[Any], what: str = "data") -> Iterator[Batch]:
    """Normalized batches of ``data``; one clear error if it is not iterable or is empty."""
    if isinstance(data, (Tensor, Mapping)) or not isinstance(data, Iterable):
        raise QuantlensError(f"{what} must be an iterable of batches ((inputs, labels), tensors or dicts), got {type(data).__name__}")
    n = 0
    for i, b in enumerate(data):
        inputs, labels = normalize_batch(b, i)
        if inputs.batch_size == 0:
            continue
        n += 1
        yield inputs, labels
    if n == 0:
        raise QuantlensError(f"{what} is empty: give at least one batch")


def count_batches(data: Any) -> Optional[int]:
    try:
        return len(data)
    except TypeError:
        return None


def check_reiterable(data: Any, what: str = "data") -> None:
    """A one-shot iterator would be empty on the second pass: refuse it up front."""
    if isinstance(data, Iterator):
        raise QuantlensError(
            f"{what} is a one-shot iterator; pass something that can be iterated more than once "
            "(a list of batches or a DataLoader)"
        )


def _first_tensor(out: Any) -> Optional[Tensor]:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping):
        for v in out.values():
            t = _first_tensor(v)
            if t is not None:
                return t
        return None
    if isinstance(out, (tuple, list)):
        for v in out:
            t = _first_tensor(v)
            if t is not None:
                return t
        return None
    if hasattr(out, "__dict__"):
        for v in vars(out).values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def extract_output(out: Any, key: Union[str, int, None] = None) -> Tensor:
    """The tensor ``y`` that metrics score (see module docstring)."""
    if key is not None:
        try:
            if isinstance(out, Mapping):
                y = out[key]
            elif isinstance(out, (tuple, list)):
                y = out[int(key)]
            else:
                y = getattr(out, str(key))
        except (KeyError, IndexError, AttributeError, ValueError):
            raise QuantlensError(f"the model's output has no entry {key!r}") from None
        if not isinstance(y, Tensor):
            raise QuantlensError(f"the model's output {key!r} is a {type(y).__name__}, not a tensor")
        return y
    y = _first_tensor(out)
    if y is None:
        raise QuantlensError(f"the model's output ({type(out).__name__}) contains no tensor")
    return y


def _kwargs(inputs: Any) -> Mapping:
    kw = getattr(inputs, "kwargs", None)
    return kw if isinstance(kw, Mapping) else {}


def attention_mask(inputs: Any) -> Optional[Tensor]:
    """The batch's ``attention_mask`` keyword input (``[batch, seq]``, 0 = padding), if any."""
    m = _kwargs(inputs).get("attention_mask")
    return m if isinstance(m, Tensor) else None


def input_ids(inputs: Any) -> Optional[Tensor]:
    """The batch's ``input_ids``: the keyword input of that name, else the first positional
    integer tensor."""
    ids = _kwargs(inputs).get("input_ids")
    if isinstance(ids, Tensor):
        return ids
    args = getattr(inputs, "args", inputs)
    if isinstance(args, (tuple, list)) and args and isinstance(args[0], Tensor):
        if not args[0].is_floating_point():
            return args[0]
    return None


def token_labels(inputs: Any, labels: Optional[Tensor]) -> Optional[Tensor]:
    """Per-token targets of a causal LM, in the positions of ``input_ids`` (not yet shifted).

    ``labels`` if the batch has them, else the input ids; ``IGNORE_INDEX`` (-100) wherever the
    attention mask is 0. ``None`` when there are neither labels nor input ids.

    Example:
        >>> import torch
        >>> class I: kwargs = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 0]])}
        >>> token_labels(I(), None)
        tensor([[   5,    6, -100]])
    """
    lab = labels if labels is not None else input_ids(inputs)
    if lab is None:
        return None
    lab = lab.long()
    mask = attention_mask(inputs)
    if mask is not None and tuple(mask.shape) == tuple(lab.shape):
        lab = lab.masked_fill(mask.to(lab.device) == 0, IGNORE_INDEX)
    return lab
