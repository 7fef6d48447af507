"""Token-level metrics of language models: streaming sums over counted tokens.

The output ``y`` is vocabulary logits ``[batch, seq, vocab]``. Every metric keeps a float64
``total`` and an integer ``count`` of counted tokens, so shards merge exactly and the value
is a mean over all counted tokens of the data (not a mean of per-batch means).

=====================  =====================================================  ======
name                   value                                                  better
=====================  =====================================================  ======
``nll``                ``mean_t -log softmax(y_t)[label_{t+1}]``              lower
``perplexity``         ``exp(nll)``                                           lower
``token_kl``           ``mean_t KL(softmax y_ref_t || softmax y_t)``          lower
``token_agreement``    ``mean_t [argmax y_t == argmax y_ref_t]``              higher
=====================  =====================================================  ======

Counted tokens:

* ``nll`` / ``perplexity``: the targets are the batch's ``labels`` (Hugging Face convention:
  the positions of ``input_ids``; the metric shifts them by one), else the input ids
  themselves (:func:`~quantlens.data.batches.token_labels`). Position ``t`` predicts
  ``label_{t+1}``; it counts unless that label is -100 or the attention mask is 0 at ``t`` or
  ``t+1``.
* ``token_kl`` / ``token_agreement`` are label-free: every position whose attention mask is 1
  (every position when the inputs carry no mask).

Interval (rule ``ratio``, :mod:`quantlens.stats.ratio`): the sequence (a row of the batch) is the
independent unit. Per sequence ``s`` the metric keeps ``a_s`` / ``b_s``, the sums of its token
scores under the reference / quantized, and its counted tokens ``n_s``; the degradation's 95%
interval is the delta-method one of the paired ratio estimators ``sum a_s / sum n_s`` and
``sum b_s / sum n_s`` (through ``exp`` for perplexity). All sums add, so shards merge exactly.

Example:
    >>> import torch
    >>> class Batch: kwargs = {"input_ids": torch.tensor([[0, 1, 1]])}
    >>> m = NLL()
    >>> m.update(torch.zeros(1, 3, 4), torch.zeros(1, 3, 4), None, inputs=Batch())
    >>> round(m.compute(), 4), m.count                 # log(4) per token, 2 tokens
    (1.3863, 2)
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from quantlens.errors import QuantlensError
from quantlens.metrics.task import SumMetric, register_metric
from quantlens.stats.ratio import RatioSums

__all__ = ["NLL", "Perplexity", "TokenKL", "TokenAgreement", "check_logits"]

#: float64 elements per step: bounded memory for a 50k-entry vocabulary, and each step's temporaries
#: (2 MB each) stay in cache: on SmolLM2's 49,152 entries, 5 rows a step score ``token_kl`` 2.5x
#: faster than 85 (one thread, the same values row by row)
_CHUNK_ELEMENTS = 1 << 18


def check_logits(name: str, y: Tensor) -> None:
    """One line unless ``y`` is floating-point logits ``[batch, seq, vocab]``."""
    if y.dim() != 3 or y.shape[-1] < 2 or not y.is_floating_point():
        raise QuantlensError(
            f"metric {name!r} needs vocabulary logits over a sequence [batch, seq, vocab], but the model's output "
            f"has shape {tuple(y.shape)}: pick the logits with --output-key, or use kl / mse / cosine"
        )


def _rows_step(vocab: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(1, vocab))


def _rows(t: Tensor) -> list[Tensor]:
    return list(t.split(_rows_step(t.shape[-1]), dim=0))


def _token_mask(inputs: Any, y: Tensor) -> Optional[Tensor]:
    from quantlens.data.batches import attention_mask

    mask = attention_mask(inputs)
    if mask is None:
        return None
    if tuple(mask.shape) != tuple(y.shape[:2]):
        raise QuantlensError(
            f"the attention mask has shape {tuple(mask.shape)} but the logits are {tuple(y.shape)}: "
            "the mask must be [batch, seq] like the logits"
        )
    return mask.to(y.device) != 0


def _no_token(name: str) -> QuantlensError:
    return QuantlensError(
        f"metric {name!r}: a batch has no counted token (every label is -100 or its attention mask is 0); "
        "drop fully padded batches from the data"
    )


class _TokenSum(SumMetric):
    """``total`` and ``count`` over counted tokens; ``update`` sees the batch's inputs.

    The interval (rule ``ratio``): tokens of one sequence are not independent samples, so each
    row of the batch (a sequence) is the unit: ``paired`` keeps the per-sequence sums of the
    token scores under the reference and quantized (:class:`~quantlens.stats.ratio.RatioSums`),
    and the interval is the delta-method one of a paired difference of ratio estimators
    (:mod:`quantlens.stats.ratio`). ``link`` maps the token mean to the metric (``exp`` for
    perplexity). A document split over several rows counts as several sequences."""

    needs_inputs = True
    interval_rule = "ratio"
    per_token = True
    link = "identity"

    def __init__(self) -> None:
        super().__init__()
        self.paired = RatioSums(self.link)

    def update(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], inputs: Any = None) -> None:
        check_logits(self.name, y)
        if y_ref.shape != y.shape:
            raise QuantlensError(f"metric {self.name!r}: reference logits {tuple(y_ref.shape)} and logits {tuple(y.shape)} differ in shape")
        same = y_ref is y  # the baseline's update: the reference scores are the scores
        q, seq = self.token_scores(y_ref.detach(), y.detach(), labels, inputs)
        if q.numel() == 0:
            raise _no_token(self.name)
        if same:
            _remember(self, y_ref, labels, inputs, q)
            r = q
        else:
            r = _recall(self, y_ref, labels, inputs)
            if r is None:
                r = self.reference_scores(y_ref.detach(), labels, inputs, q)
                _remember(self, y_ref, labels, inputs, r)
        rows = y.shape[0]

        def per_sequence(t: Tensor) -> Tensor:
            return torch.zeros(rows, dtype=torch.float64, device=t.device).index_add_(0, seq, t.double())

        qs = per_sequence(q)
        self.total += float(qs.sum())
        self.count += int(q.numel())
        self.paired.update(per_sequence(r).cpu(), qs.cpu(), torch.bincount(seq, minlength=rows).cpu())

    def load_state(self, state: dict) -> None:
        self.total = float(state["total"])
        self.count = int(state["count"])
        self.paired = RatioSums.from_state(state.get("paired"), self.link)  # older states: no interval

    def token_scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], inputs: Any) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Per counted token: its score under ``y`` (float64) and its row (sequence) in the batch."""
        raise NotImplementedError

    def reference_scores(self, y_ref: Tensor, labels: Optional[Tensor], inputs: Any, q: Tensor) -> Tensor:
        """The same tokens' scores under the reference (``y = y_ref``)."""
        return self.token_scores(y_ref, y_ref, labels, inputs)[0]


_MEMO = threading.local()  # one slot: the last reference scores, for the cells of one batch


def _memo_key(metric: _TokenSum, labels: Optional[Tensor], inputs: Any) -> tuple:
    return (type(metric).reference_scores, type(metric).token_scores, labels, inputs)


def _remember(metric: _TokenSum, y_ref: Tensor, labels: Optional[Tensor], inputs: Any, scores: Tensor) -> None:
    """Keep ``scores`` (the reference's token scores) for the next cells that score against the same
    ``y_ref`` object: every cell of a batch shares it, so the reference is scored once per batch.
    ``y_ref`` is held weakly (it may be a large logits tensor) and must be unchanged (:func:`_stamp`)."""
    _MEMO.slot = (weakref.ref(y_ref), _stamp(y_ref), _memo_key(metric, labels, inputs), scores)


def _stamp(t: Tensor) -> tuple:
    """What changes when ``t`` is written in place: its version counter, or for an inference tensor
    (which has none; the engines score inside ``inference_mode``) a sum over 4,096 strided entries."""
    try:
        return ("version", t._version)
    except RuntimeError:
        flat = t.detach().reshape(-1)
        return ("sample", float(flat[:: max(1, flat.numel() // 4096)].double().sum()))


def _recall(metric: _TokenSum, y_ref: Tensor, labels: Optional[Tensor], inputs: Any) -> Optional[Tensor]:
    slot = getattr(_MEMO, "slot", None)
    if slot is None:
        return None
    ref, version, key, scores = slot
    mine = _memo_key(metric, labels, inputs)
    if ref() is not y_ref or version != _stamp(y_ref) or any(a is not b for a, b in zip(key, mine)):
        return None
    return scores


def _row_index(keep: Tensor) -> Tensor:
    """The row of each True entry of a ``[batch, seq]`` mask, in ``t[keep]`` order."""
    return torch.arange(keep.shape[0], device=keep.device).unsqueeze(1).expand_as(keep)[keep]


@register_metric("nll")
class NLL(_TokenSum):
    """Mean next-token negative log-likelihood (nats) over counted tokens."""

    higher_is_better = False

    def token_scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], inputs: Any) -> tuple[Tensor, Tensor]:
        keep, tgt = self.targets(y, labels, inputs)
        seq = _row_index(keep)
        if tgt.numel() == 0:
            return torch.zeros(0, dtype=torch.float64, device=y.device), seq
        vocab = y.shape[-1]
        parts = [F.cross_entropy(rows.double(), t, reduction="none")
                 for rows, t in zip(_rows(y[:, :-1][keep]), tgt.split(_rows_step(vocab)))]
        return torch.cat(parts), seq

    def targets(self, y: Tensor, labels: Optional[Tensor], inputs: Any) -> tuple[Tensor, Tensor]:
        """The counted positions ``keep`` (bool ``[batch, seq - 1]``: position ``t`` predicts
        ``label_{t+1}``) and their targets ``label_{t+1}``, in ``y[:, :-1][keep]`` order; one line if
        the labels are missing, of the wrong shape or outside the vocabulary."""
        from quantlens.data.batches import IGNORE_INDEX, token_labels

        lab = token_labels(inputs, labels)
        if lab is None:
            raise QuantlensError(
                f"metric {self.name!r} needs the next tokens: give the batches labels, or an input_ids input"
            )
        if tuple(lab.shape) != tuple(y.shape[:2]):
            raise QuantlensError(
                f"labels have shape {tuple(lab.shape)} but the logits are {tuple(y.shape)}: give one label per "
                "token position, [batch, seq] (the metric shifts them by one)"
            )
        lab = lab.to(y.device)
        target = lab[:, 1:]
        keep = target != IGNORE_INDEX
        mask = _token_mask(inputs, y)
        if mask is not None:
            keep &= mask[:, :-1] & mask[:, 1:]
        tgt = target[keep]
        if tgt.numel():
            vocab = y.shape[-1]
            lo, hi = int(tgt.min()), int(tgt.max())
            if lo < 0 or hi >= vocab:
                raise QuantlensError(f"labels hold token id {hi if hi >= vocab else lo} but the logits have {vocab} entries")
        return keep, tgt


@register_metric("perplexity")
class Perplexity(NLL):
    """``exp(mean nll)`` over all counted tokens of the data.

    Its interval is on ``exp(m_q) - exp(m_r)`` (``m`` the mean nll, quantized / reference), by the
    delta method with gradient ``(exp m_q, -exp m_r)`` (:mod:`quantlens.stats.ratio`)."""

    link = "exp"

    def compute(self) -> float:
        return math.exp(self.total / self.count) if self.count else float("nan")


def _label_free_rows(y_ref: Tensor, y: Tensor, inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
    """The counted positions' logits ``[K, vocab]`` (reference, quantized) and their rows; with no
    mask, views of every position (the same rows in the same order as ``y[all-true mask]``, no copy)."""
    mask = _token_mask(inputs, y)
    if mask is None or bool(mask.all()):  # every position counts: views, not two copies of the logits
        rows = torch.arange(y.shape[0], device=y.device).repeat_interleave(y.shape[1])
        return y_ref.reshape(-1, y_ref.shape[-1]), y.reshape(-1, y.shape[-1]), rows
    return y_ref[mask], y[mask], _row_index(mask)


_REF_LOGP = threading.local()  # one slot: the reference's float64 log-softmax, for the cells of one batch
#: the reference's cached log-probabilities (and probabilities) stay under this many bytes; beyond, recomputed per cell
REF_LOGP_BYTES = 1 << 30


def _reference_logp(y_ref: Tensor, r: Tensor, inputs: Any) -> Optional[list[tuple[Tensor, Tensor]]]:
    """``[(log softmax(a), softmax(a)) for a in _rows(r)]`` in float64, where ``r`` are the counted
    rows of ``y_ref``: computed once per ``y_ref`` object (every cell of a batch shares it, as the
    reference scores' memo does) and kept while ``y_ref`` lives unchanged; ``None`` when it would
    exceed :data:`REF_LOGP_BYTES`."""
    if 2 * r.numel() * 8 > REF_LOGP_BYTES:
        return None
    slot = getattr(_REF_LOGP, "slot", None)
    stamp = _stamp(y_ref)
    if slot is not None and slot[0]() is y_ref and slot[1] == stamp and slot[2] is inputs:
        return slot[3]
    parts = []
    for a in _rows(r):
        lp_ref = F.log_softmax(a.double(), dim=-1)
        parts.append((lp_ref, lp_ref.exp()))
    def drop(ref: Any) -> None:  # y_ref is gone: free its log-probabilities with it
        if getattr(_REF_LOGP, "slot", None) is not None and _REF_LOGP.slot[0] is ref:
            _REF_LOGP.slot = None

    _REF_LOGP.slot = (weakref.ref(y_ref, drop), stamp, inputs, parts)
    return parts


@register_metric("token_kl")
class TokenKL(_TokenSum):
    """Mean KL(float || quantized) of the next-token distributions over counted tokens."""

    higher_is_better = False
    _reference: Optional[Tensor] = None

    def update(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], inputs: Any = None) -> None:
        self._reference = y_ref
        try:
            super().update(y_ref, y, labels, inputs)
        finally:
            self._reference = None

    def token_scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], inputs: Any) -> tuple[Tensor, Tensor]:
        r, q, seq = _label_free_rows(y_ref, y, inputs)
        owner = self._reference  # the caller's y_ref (``y_ref`` here is a fresh detached view of it)
        ref = _reference_logp(owner, r, inputs) if owner is not None and owner.data_ptr() == y_ref.data_ptr() else None
        if ref is None:
            ref = ((lp_ref, lp_ref.exp()) for lp_ref in (F.log_softmax(a.double(), dim=-1) for a in _rows(r)))
        parts = []
        for (lp_ref, p_ref), b in zip(ref, _rows(q)):
            lp = F.log_softmax(b.double(), dim=-1)
            parts.append((p_ref * (lp_ref - lp)).sum(-1))
        return (torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=y.device)), seq

    def reference_scores(self, y_ref: Tensor, labels: Optional[Tensor], inputs: Any, q: Tensor) -> Tensor:
        return torch.zeros_like(q)  # KL(p || p) = 0


@register_metric("token_agreement")
class TokenAgreement(_TokenSum):
    """Share of counted tokens whose arg-max token is the float model's."""

    def token_scores(self, y_ref: Tensor, y: Tensor, labels: Optional[Tensor], inputs: Any) -> tuple[Tensor, Tensor]:
        r, q, seq = _label_free_rows(y_ref, y, inputs)
        return (r.argmax(-1) == q.argmax(-1)).double(), seq

    def reference_scores(self, y_ref: Tensor, labels: Optional[Tensor], inputs: Any, q: Tensor) -> Tensor:
        return torch.ones_like(q)  # the reference agrees with itself
