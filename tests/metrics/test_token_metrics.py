"""Token-level metrics against a per-token loop on padded batches; shards merge exactly."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from quantlens.errors import QuantlensError
from quantlens.metrics.task import make_metric, update_metric
from support.tokens import inputs_of, padded_logits



def _oracle(name, y_ref, y, ids, mask, labels):
    """The definition, token by token in Python."""
    vals = []
    for n in range(y.shape[0]):
        for t in range(y.shape[1]):
            if name in ("nll", "perplexity"):
                if t + 1 >= y.shape[1]:
                    continue
                lab = (labels if labels is not None else ids)[n, t + 1]
                if lab == -100 or mask[n, t] == 0 or mask[n, t + 1] == 0:
                    continue
                vals.append(-float(F.log_softmax(y[n, t].double(), 0)[lab]))
            else:
                if mask[n, t] == 0:
                    continue
                if name == "token_kl":
                    p = F.log_softmax(y_ref[n, t].double(), 0)
                    q = F.log_softmax(y[n, t].double(), 0)
                    vals.append(float((p.exp() * (p - q)).sum()))
                else:
                    vals.append(float(y[n, t].argmax() == y_ref[n, t].argmax()))
    m = sum(vals) / len(vals)
    return math.exp(m) if name == "perplexity" else m


@pytest.mark.parametrize("name", ["nll", "perplexity", "token_kl", "token_agreement"])
@pytest.mark.parametrize("with_labels", [True, False])
def test_token_metric_matches_per_token_loop_and_merges(name, with_labels):
    y_ref, y, ids, mask, labels = padded_logits()
    lab = labels if with_labels else None
    whole = make_metric(name)
    update_metric(whole, y_ref, y, lab, inputs_of(input_ids=ids, attention_mask=mask))
    assert whole.compute() == pytest.approx(_oracle(name, y_ref, y, ids, mask, lab), rel=1e-9)
    parts = []
    for sl in (slice(0, 2), slice(2, 5)):  # shards of different sizes
        m = make_metric(name)
        update_metric(m, y_ref[sl], y[sl], None if lab is None else lab[sl], inputs_of(input_ids=ids[sl], attention_mask=mask[sl]))
        parts.append(m)
    merged = parts[0].merge(parts[1])
    assert merged.compute() == pytest.approx(whole.compute(), rel=1e-12)
    assert merged.count == whole.count
    resumed = make_metric(name)
    resumed.load_state(merged.state())
    assert resumed.compute() == pytest.approx(whole.compute(), rel=1e-12)


def test_perplexity_is_exp_of_the_token_mean_not_a_mean_of_batch_perplexities():
    y_ref, y, ids, mask, _ = padded_logits(seed=1)
    m = make_metric("perplexity")
    per_batch = []
    for n in range(y.shape[0]):
        update_metric(m, y_ref[n : n + 1], y[n : n + 1], None, inputs_of(input_ids=ids[n : n + 1], attention_mask=mask[n : n + 1]))
        one = make_metric("perplexity")
        update_metric(one, y_ref[n : n + 1], y[n : n + 1], None, inputs_of(input_ids=ids[n : n + 1], attention_mask=mask[n : n + 1]))
        per_batch.append(one.compute())
    assert m.compute() == pytest.approx(_oracle("perplexity", y_ref, y, ids, mask, None), rel=1e-9)
    assert m.compute() != pytest.approx(sum(per_batch) / len(per_batch), rel=1e-6)


def test_label_free_token_metrics_without_a_mask_count_every_position():
    y_ref, y, ids, _, _ = padded_logits(seed=2)
    full = torch.ones_like(ids)
    for name in ("token_kl", "token_agreement"):
        a, b = make_metric(name), make_metric(name)
        update_metric(a, y_ref, y, None, inputs_of(input_ids=ids))
        update_metric(b, y_ref, y, None, inputs_of(input_ids=ids, attention_mask=full))
        assert a.compute() == b.compute() and a.count == ids.numel()


def test_token_kl_of_identical_logits_is_zero_and_agreement_one():
    y_ref, _, ids, mask, _ = padded_logits()
    kl, agr = make_metric("token_kl"), make_metric("token_agreement")
    for m in (kl, agr):
        update_metric(m, y_ref, y_ref, None, inputs_of(input_ids=ids, attention_mask=mask))
    assert kl.compute() == 0.0 and agr.compute() == 1.0


def test_cosine_and_mse_leave_padded_tokens_out():
    y_ref, y, ids, mask, _ = padded_logits(seed=3)
    for name in ("cosine", "mse"):
        m = make_metric(name)
        update_metric(m, y_ref, y, None, inputs_of(input_ids=ids, attention_mask=mask))
        vals = []
        for n in range(y.shape[0]):
            keep = mask[n] != 0
            a, r = y[n][keep].double().reshape(-1), y_ref[n][keep].double().reshape(-1)
            vals.append(float(F.cosine_similarity(a, r, 0)) if name == "cosine" else float(((a - r) ** 2).mean()))
        assert m.compute() == pytest.approx(sum(vals) / len(vals), rel=1e-9)
        # garbage in the padded positions changes nothing
        y2 = y.clone()
        y2[mask == 0] = 1e3
        m2 = make_metric(name)
        update_metric(m2, y_ref, y2, None, inputs_of(input_ids=ids, attention_mask=mask))
        assert m2.compute() == pytest.approx(m.compute(), rel=1e-12)


def test_token_metric_errors_are_one_line():
    y_ref, y, ids, mask, labels = padded_logits()
    m = make_metric("perplexity")
    with pytest.raises(QuantlensError, match=r"logits over a sequence .*shape \(5, 13\)"):
        update_metric(m, y_ref[:, 0], y[:, 0], None, inputs_of(input_ids=ids))
    with pytest.raises(QuantlensError, match=r"labels have shape \(5, 8\) but the logits are \(5, 9, 13\)"):
        update_metric(m, y_ref, y, labels[:, :8], inputs_of(input_ids=ids))
    with pytest.raises(QuantlensError, match="no counted token"):
        update_metric(m, y_ref, y, None, inputs_of(input_ids=ids, attention_mask=torch.zeros_like(mask)))
    with pytest.raises(QuantlensError, match="no counted token"):
        update_metric(m, y_ref, y, torch.full_like(ids, -100), inputs_of(input_ids=ids))
    with pytest.raises(QuantlensError, match="no counted token"):
        update_metric(make_metric("token_kl"), y_ref, y, None, inputs_of(input_ids=ids, attention_mask=torch.zeros_like(mask)))
    with pytest.raises(QuantlensError, match="needs the next tokens"):
        update_metric(m, y_ref, y, None, inputs_of(x=torch.randn(5, 9)))
    with pytest.raises(QuantlensError, match="token id 99"):
        bad = labels.clone()
        bad[0, 1] = 99
        update_metric(m, y_ref, y, bad, inputs_of(input_ids=ids))


def test_token_metrics_directions():
    assert not make_metric("perplexity").higher_is_better and not make_metric("token_kl").higher_is_better
    assert make_metric("token_agreement").higher_is_better
