"""The first-order estimate: its formula against a direct computation, its check against exact
cones, the summary's trust sentence, and the one-line errors when there is no gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from support.models import tiny_data, tiny_net
from torch import nn

import quantlens as ql
from quantlens.sweep.estimate import check_bits, first_order, spearman
from quantlens.errors import QuantlensError
from quantlens.report.insights import insights


def test_spearman_against_direct_ranks():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties: average ranks
    assert math.isnan(spearman([1, 2], [1, 2]))


class Branchy(nn.Module):
    """conv-relu -> depthwise-relu6 -> residual add -> 1x1 conv -> pool -> linear; activations as modules."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.r1 = nn.ReLU()
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.r2 = nn.ReLU6()
        self.pw = nn.Conv2d(6, 4, 1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        h = self.r1(self.conv(x))
        p = self.pw(h + self.r2(self.dw(h)))
        return self.fc(p.mean((2, 3)))


def _naive_first_order(m: nn.Module, batches: list, bits: int, a_bits, seed: int) -> dict:
    """The module docstring's formula from per-sample autograd gradients (one backward per sample
    and tap, hooks on the plain model), with torch's fake-quantize for the weight error."""
    layers = {"conv": (m.conv, m.r1), "dw": (m.dw, m.r2), "pw": (m.pw, m.pw), "fc": (m.fc, m.fc)}
    gen = torch.Generator().manual_seed(seed)
    labels = []
    for x in batches:
        logits = m(x).double()
        labels.append(torch.multinomial(F.softmax(logits.detach(), 1), 1, generator=gen).reshape(-1))

    def grads(x, c, name, where):
        """d log p(c | x) / d (the layer's weight, its own input edge, or its post-activation output)."""
        layer, act = layers[name]
        leaf = {}

        def swap(t):
            leaf["t"] = t.detach().requires_grad_(True)
            return leaf["t"]

        h = (layer.register_forward_pre_hook(lambda mod, a: (swap(a[0]),)) if where == "input" else
             act.register_forward_hook(lambda mod, a, o: swap(o)) if where == "output" else None)
        try:
            with torch.enable_grad():
                if where == "weight":
                    w = layer.weight.detach().requires_grad_(True)
                    lp = F.log_softmax(torch.func.functional_call(m, {f"{name}.weight": w}, (x,)).double(), 1)[0, c]
                    return torch.autograd.grad(lp, w)[0], None
                lp = F.log_softmax(m(x).double(), 1)[0, c]
                return torch.autograd.grad(lp, leaf["t"])[0], leaf["t"].detach()
        finally:
            if h is not None:
                h.remove()

    out = {}
    for name, (layer, act) in layers.items():
        w = layer.weight.detach()
        s = float(w.abs().max()) / (2 ** (bits - 1) - 1)
        dw = torch.fake_quantize_per_tensor_affine(w, s, 0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) - w
        rows = dw.reshape(dw.shape[0], -1).double()
        mu = rows.mean(1)
        r2 = (rows - mu[:, None]) ** 2
        total, xs, os_, a_in, a_out, n = 0.0, [], [], 0.0, 0.0, 0
        for x, c in zip(batches, labels):
            g_sum = torch.zeros_like(rows)
            for k in range(x.shape[0]):
                gw = grads(x[k:k + 1], c[k], name, "weight")[0].reshape(rows.shape).double()
                g_sum += gw
                total += float(gw.sum(1) @ mu) ** 2  # (mu . S_n)^2, S_n,c = sum of the channel's gradient
                gx, xv = grads(x[k:k + 1], c[k], name, "input")
                go, ov = grads(x[k:k + 1], c[k], name, "output")
                a_in += float((gx.double() ** 2 * (xv != 0)).sum())
                a_out += float((go.double() ** 2 * (ov != 0)).sum())
                xs.append(xv)
                os_.append(ov)
            total += float((r2 * g_sum ** 2).sum())  # the batch gradient squared: the diagonal part
            n += x.shape[0]
        if a_bits is not None:
            def step(vs):
                lo, hi = min(float(torch.cat(vs).min()), 0.0), max(float(torch.cat(vs).max()), 0.0)
                return (hi - lo) / (2 ** a_bits - 1)

            total += step(xs) ** 2 / 12 * a_in + step(os_) ** 2 / 12 * a_out
        out[name] = 0.5 * total / n
    return out


@pytest.mark.parametrize("bits,a_bits", [(4, None), (8, 8), (3, 8)])
def test_first_order_equals_naive_per_sample_formula(bits, a_bits):
    """est(i, b) against the formula evaluated with one autograd backward per sample and tap."""
    from quantlens.sweep.api import make_config
    from quantlens.data.batches import iterate
    from quantlens.parallel import SweepRecipe

    m = Branchy().eval()
    g0 = torch.Generator().manual_seed(1)
    batches = [torch.randn(5, 3, 6, 6, generator=g0), torch.randn(4, 3, 6, 6, generator=g0)]
    data = [(x, None) for x in batches]
    sweep = SweepRecipe(m, next(iterate(data)), make_config([bits], a_bits=a_bits), "kl", "cpu", None, None, "cone", None).build()
    est = first_order(sweep, data, seed=7)
    want = _naive_first_order(m, batches, bits, a_bits, seed=7)
    names = {l.index: l.name for l in sweep.layers}
    got = {names[i]: v for (i, b), v in est.items()}
    assert set(got) == set(want)
    for name in want:
        assert want[name] > 0 and got[name] == pytest.approx(want[name], rel=2e-4), name
    if a_bits is not None:  # the same pass calibrated the quantizers as Sweep.calibrate does
        ref = SweepRecipe(m, next(iterate(data)), make_config([bits], a_bits=a_bits), "kl", "cpu", None, None, "cone", None).build()
        ref.calibrate(data)
        for i in sweep.layer_ids:
            assert float(sweep.runner.in_q[i].scale) == float(ref.runner.in_q[i].scale)
            assert float(sweep.runner.out_q[i].scale) == float(ref.runner.out_q[i].scale)


def test_check_bits_rule():
    from quantlens.sweep.api import make_config
    from quantlens.data.batches import iterate
    from quantlens.sweep.estimate import estimate_sweep
    from quantlens.parallel import SweepRecipe

    assert check_bits([3, 4, 5, 6, 7, 8]) == 4 and check_bits([6, 8]) == 6 and check_bits([8, 2]) == 2
    d = tiny_data(1, 4)
    sweep = SweepRecipe(tiny_net(), next(iterate(d)), make_config([4, 8]), "kl", "cpu", None, None, "cone", None).build()
    with pytest.raises(QuantlensError, match="check at 5 bits needs that bit-width in the sweep"):
        estimate_sweep(sweep, d, check_at=5)


def test_estimate_is_checked_and_reported():
    m, d = tiny_net(), tiny_data(n_batches=2, batch=16)
    r = ql.analyze(m, d, w_bits=[3, 8], metric="kl", method=ql.Estimate(k=2, budget=math.inf))
    info = r.extra["estimate"]  # no time limit: every candidate (top 2, boundary 2, random 2 of 8 layers)
    assert r.engine == "estimate" and info["check_bits"] == 3 and info["checked_cells"] == info["candidate_cells"] == 6
    assert 0 <= info["topk_overlap"][3] <= 1 and list(r.w_bits) == [3, 8] and len(r.cells) == 2 * len(r.layers)
    assert all(c.estimate >= 0 for c in r.cells)
    measured = [c for c in r.cells if not math.isnan(c.degradation)]
    assert len(measured) == 6 and {c.w_bits for c in measured} == {3}
    by_est = sorted(r.at(3), key=lambda c: -c.estimate)
    assert {c.layer for c in by_est[:2]} <= {c.layer for c in measured}  # the estimate's top k are checked
    exact = ql.analyze(m, d, w_bits=[3, 8], metric="kl")
    for c in measured:  # the check's cells are the exact sweep's
        e = exact.cell(c.layer, c.w_bits)
        assert c.degradation == pytest.approx(e.degradation, rel=1e-9) and c.noise == pytest.approx(e.noise, rel=1e-9)
        assert c.ci_low == pytest.approx(e.ci_low, rel=1e-9)
    xs = [c.estimate for c in measured]
    ys = [c.degradation for c in measured]
    assert info["spearman"] == pytest.approx(spearman(xs, ys))
    top_exact = {c.layer for c in sorted(measured, key=lambda c: -c.degradation)[:2]}
    assert info["topk_overlap"][3] == len(top_exact & {c.layer for c in by_est[:2]}) / 2
    assert [l.name for l in r.layers] == [l.name for l in exact.layers] and all(l.weight is not None for l in r.layers)
    text = " ".join(i.text for i in insights(r, 3))
    assert "first-order estimate" in text
    import dataclasses

    bad = dataclasses.replace(r, extra={"estimate": {**info, "spearman": 0.2}})
    assert "the estimate cannot be trusted for this model" in " ".join(i.text for i in insights(bad, 3))


def test_estimate_with_separate_calibration_data_matches_exact_cells():
    m, d, calib = tiny_net(), tiny_data(n_batches=2, batch=8), tiny_data(n_batches=1, batch=8, seed=5)
    r = ql.analyze(m, d, calib=calib, w_bits=[4, 6], metric="kl", method=ql.Estimate(k=1, budget=math.inf))
    exact = ql.analyze(m, d, calib=calib, w_bits=[4, 6], metric="kl")
    measured = [c for c in r.cells if not math.isnan(c.degradation)]
    assert len(measured) == 3 and {c.w_bits for c in measured} == {4}
    for c in measured:
        assert c.degradation == pytest.approx(exact.cell(c.layer, 4).degradation, rel=1e-9)


def test_estimate_compiles_only_the_checked_cones():
    """Cones compile on first use: the estimate's check builds the modules of its checked layers alone."""
    from quantlens.sweep.api import make_config
    from quantlens.sweep.estimate import estimate_sweep
    from quantlens.data.batches import iterate
    from quantlens.parallel import SweepRecipe

    data = [(torch.randn(4, 3, 6, 6), None)]
    sweep = SweepRecipe(Branchy().eval(), next(iterate(data)), make_config([4]), "kl", "cpu", None, None, "cone", None).build()
    assert not any(c.compiled for c in sweep.runner.cones)
    r = estimate_sweep(sweep, data, k=1, budget=math.inf)
    checked = {c.layer for c in r.cells if not math.isnan(c.degradation)}
    assert len(checked) == 3 and {c.layer.name for c in sweep.runner.cones if c.compiled} == checked


class TokenNet(nn.Module):
    """Token ids -> embedding -> fc1 -> relu -> head: logits ``[batch, seq, vocab]``; the mask is ignored."""

    def __init__(self, vocab: int = 7) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(vocab, 4)
        self.fc1 = nn.Linear(4, 8)
        self.head = nn.Linear(8, vocab)

    def forward(self, input_ids, attention_mask=None):
        return self.head(torch.relu(self.fc1(self.emb(input_ids))))


def _naive_token_first_order(m: TokenNet, batches: list, bits: int, seed: int) -> dict:
    """The weight terms of ``est`` for a token metric, from one autograd backward per sequence: a label
    drawn at every position (the implementation's draw order), padded positions left out, ``N`` = tokens."""
    gen = torch.Generator().manual_seed(seed)
    draws = []
    for b in batches:
        logits = m(b["input_ids"]).double()
        c = torch.multinomial(F.softmax(logits.reshape(-1, logits.shape[-1]), 1), 1, generator=gen)
        draws.append(c.reshape(logits.shape[:2]))
    out = {}
    for name in ("fc1", "head"):
        w = getattr(m, name).weight.detach()
        s = float(w.abs().max()) / (2 ** (bits - 1) - 1)
        dw = (torch.fake_quantize_per_tensor_affine(w, s, 0, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) - w).double()
        mu = dw.mean(1)
        r2 = (dw - mu[:, None]) ** 2
        total, tokens = 0.0, 0
        for b, c in zip(batches, draws):
            g_sum = torch.zeros_like(dw)
            for n in range(c.shape[0]):
                leaf = w.clone().requires_grad_(True)
                with torch.enable_grad():
                    y = torch.func.functional_call(m, {f"{name}.weight": leaf}, (b["input_ids"][n:n + 1],)).double()[0]
                    keep = b["attention_mask"][n].bool()
                    lp = F.log_softmax(y, 1).gather(1, c[n][:, None]).reshape(-1)[keep].sum()
                    g = torch.autograd.grad(lp, leaf)[0].double()
                total += float(g.sum(1) @ mu) ** 2
                g_sum += g
                tokens += int(keep.sum())
            total += float((r2 * g_sum ** 2).sum())
        out[name] = 0.5 * total / tokens
    return out


def test_token_metric_estimate_is_per_position_and_skips_padding():
    """Integer token ids carry no gradient and need none: the estimate draws a label per counted position
    (one distribution per token, not the flattened sequence) and equals the per-sequence autograd oracle."""
    from quantlens.sweep.api import make_config
    from quantlens.data.batches import iterate
    from quantlens.parallel import SweepRecipe

    m = TokenNet().eval()
    g0 = torch.Generator().manual_seed(2)
    batches = []
    for n in (3, 2):
        mask = torch.ones(n, 6, dtype=torch.long)
        mask[0, 4:] = 0  # a padded sequence
        batches.append({"input_ids": torch.randint(0, 7, (n, 6), generator=g0), "attention_mask": mask})
    sweep = SweepRecipe(m, next(iterate(batches)), make_config([4], a_bits=None), "token_kl", "cpu", None, None, "cone",
                        None).build()
    est = first_order(sweep, batches, seed=5)
    want = _naive_token_first_order(m, batches, 4, seed=5)
    names = {l.index: l.name for l in sweep.layers}
    got = {names[i]: v for (i, b), v in est.items()}
    assert set(got) == set(want)
    for name in want:
        assert want[name] > 0 and got[name] == pytest.approx(want[name], rel=1e-6), name
    # nll adds the first-order, signed term of the data's own next tokens: (grad of their summed nll) . dW / tokens
    with_nll = SweepRecipe(m, next(iterate(batches)), make_config([4], a_bits=None), "nll", "cpu", None, None, "cone",
                           None).build()
    signed = {names[i]: v - est[(i, b)] for (i, b), v in first_order(with_nll, batches, seed=5).items()}
    for name in ("fc1", "head"):
        w = getattr(m, name).weight.detach()
        s = float(w.abs().max()) / 7
        dw = (torch.fake_quantize_per_tensor_affine(w, s, 0, -8, 7) - w).double()
        leaf, total, count = w.clone().requires_grad_(True), 0.0, 0
        with torch.enable_grad():
            for b in batches:
                y = torch.func.functional_call(m, {f"{name}.weight": leaf}, (b["input_ids"],)).double()
                keep = (b["attention_mask"][:, :-1] & b["attention_mask"][:, 1:]).bool()
                total = total + F.cross_entropy(y[:, :-1][keep], b["input_ids"][:, 1:][keep], reduction="sum")
                count += int(keep.sum())
            g = torch.autograd.grad(total, leaf)[0].double()
        assert signed[name] == pytest.approx(float((g * dw).sum()) / count, rel=1e-6, abs=1e-12), name
    r = ql.analyze(m, batches, w_bits=[4], a_bits=8, metric="token_kl", method=ql.Estimate(k=1, budget=math.inf))
    assert r.extra["estimate"]["unit"] == "expected KL increase per token (nats)" and r.extra["estimate"]["checked_cells"] == 2
    with pytest.raises(QuantlensError, match="needs vocabulary logits") as e:  # a token metric on a classifier
        ql.analyze(tiny_net(), tiny_data(1, 4), w_bits=[4], metric="token_kl", method="estimate")
    assert "\n" not in str(e.value)


class Frozen(nn.Module):
    """The only layer's output goes through an integer cast: the output carries no gradient at all."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        return self.fc(x).round().long().float()


def test_no_gradient_is_one_line_error_naming_the_fallback():
    data = [(torch.randn(4, 6), None)]
    with pytest.raises(QuantlensError, match="the exact sweep is the fallback") as e:
        ql.analyze(Frozen().eval(), data, w_bits=[4], metric="kl", method="estimate")
    assert "\n" not in str(e.value)
    with pytest.raises(QuantlensError, match="--estimate runs alone"):
        ql.analyze(tiny_net(), tiny_data(1, 4), w_bits=[4], metric="kl", method="estimate", backend="ray")


class Rounded(nn.Module):
    """An integer cast between the layers: fc1's output reaches the loss through no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc2((self.fc1(x) * 4).long().float())


def test_integer_op_in_the_path_names_the_layer_and_the_fallback():
    data = [(torch.randn(4, 6), None)]
    with pytest.raises(QuantlensError, match="no gradient reaches layer fc1.*the exact sweep is the fallback") as e:
        ql.analyze(Rounded().eval(), data, w_bits=[4], metric="kl", method="estimate")
    assert "\n" not in str(e.value)


def test_hooks_engine_has_no_gradient_path():
    with pytest.raises(QuantlensError, match="forward hooks.*the exact sweep is the fallback"):
        ql.analyze(tiny_net(), tiny_data(1, 4), w_bits=[4], metric="kl", method="estimate", engine="hooks")


def _whole_logits_gradients(y, inputs, labels, gen):
    """The estimate's logits step before chunking (the oracle): the whole float64 log-softmax of the
    sampled labels and the metric's own nll over all tokens, each differentiated w.r.t. ``y``."""
    from quantlens.metrics.task import token_mask
    from quantlens.metrics.tokens import NLL

    logits = y.reshape(-1, y.shape[-1]).double()
    keep = token_mask(y, inputs).reshape(-1)
    c = torch.multinomial(F.softmax(logits.detach(), 1).cpu(), 1, generator=gen).reshape(-1)
    ll = F.log_softmax(logits, 1).gather(1, c[:, None]).reshape(-1)[keep].sum()
    true_nll, _ = NLL().token_scores(y, y, labels, inputs)
    return torch.autograd.grad(ll, y)[0], torch.autograd.grad(true_nll.sum(), y)[0], int(keep.sum()), true_nll.numel()


def test_chunked_logits_gradients_equal_the_whole_tensor_bit_for_bit(monkeypatch):
    """The logits' gradients are computed a few rows (tokens) at a time on a detached copy: on a tiny
    Llama with padding, 3-row chunks over 2 x 2 x 9 tokens give exactly the whole-tensor gradients
    (sampled labels drawn in the same order) and the same estimate as one chunk."""
    from support.lm_models import llama_ids, tiny_llama
    from quantlens.data.batches import iterate
    from quantlens.metrics.tokens import NLL
    from quantlens.parallel import SweepRecipe
    from quantlens.sweep import estimate
    from quantlens.sweep.api import make_config

    m = tiny_llama()
    batches = llama_ids(2, 2, 9)
    for b in batches:
        b["attention_mask"] = torch.ones(2, 9, dtype=torch.long)
        b["attention_mask"][1, 6:] = 0  # a padded sequence: not counted, still drawn
    inputs, labels = next(iterate(batches))
    with torch.enable_grad():
        y = m(**batches[0]).logits
    want_s, want_t, n_s, n_t = _whole_logits_gradients(y, inputs, labels, torch.Generator().manual_seed(3))
    rows, keep = estimate._output_rows(y.detach(), inputs, "nll")
    got_s, units = estimate._sampled_output_gradient(rows, keep, torch.Generator().manual_seed(3), step=3)
    got_t, count = estimate._true_nll_gradient(NLL(), y, labels, inputs, step=3)
    assert (units, count) == (n_s, n_t) == (15, 13)
    assert torch.equal(got_s.view(y.shape), want_s) and torch.equal(got_t, want_t)
    assert got_s.abs().sum() > 0 and got_t.abs().sum() > 0

    sweep = SweepRecipe(m, next(iterate(batches)), make_config([4], a_bits=None), "nll", "cpu", "logits").build()
    monkeypatch.setattr(estimate, "LOGIT_ROWS", 3)
    chunked = first_order(sweep, batches, seed=5)
    monkeypatch.setattr(estimate, "LOGIT_ROWS", 10 ** 6)
    assert first_order(sweep, batches, seed=5) == chunked


def test_micro_batches_equal_the_whole_batch_to_float32_summation_order():
    """A token batch runs through the estimate in micro-batches of a few sequences (the autograd graph
    and the tapped gradients of one micro-batch alive, not the batch's). The labels drawn are the same
    (rows in order) and every statistic sums over samples, except ``D_k``, the square of the batch's
    weight gradient, which is summed over the micro-batches before squaring: the estimates differ from
    one backward of the whole batch only by the order of float32 sums over its tokens (at most
    T eps32 ~ 1e-5 relative for T = 160 tokens; measured up to 5e-6, on the nll's signed term where
    positive and negative contributions cancel), and rank the layers the same."""
    from support.lm_models import llama_ids, tiny_llama
    from quantlens.data.batches import iterate
    from quantlens.parallel import SweepRecipe
    from quantlens.sweep.api import make_config
    from quantlens.sweep.estimate import MICRO_TOKENS, micro_batch

    m = tiny_llama()
    batches = llama_ids(2, 4, 40)
    for b in batches:
        b["attention_mask"] = torch.ones(4, 40, dtype=torch.long)
    batches[0]["attention_mask"][1, 30:] = 0
    for metric, a_bits in (("nll", None), ("token_kl", 8)):
        def run(micro):
            sweep = SweepRecipe(m, next(iterate(batches)), make_config([3, 4], a_bits=a_bits), metric, "cpu", "logits").build()
            return first_order(sweep, batches, seed=1, micro=micro)

        whole = run(0)
        assert run(None) == whole  # 40-token sequences: 6 fit in MICRO_TOKENS, the whole batch of 4 at once
        for micro in (1, 3):  # 4 parts; 3 + 1
            got = run(micro)
            assert set(got) == set(whole)
            for cell in whole:
                assert got[cell] == pytest.approx(whole[cell], rel=2e-5, abs=0), (metric, micro, cell)
            for b in (3, 4):
                order = lambda est: sorted((i for i, bb in est if bb == b), key=lambda i: -est[(i, b)])  # noqa: E731
                assert order(got) == order(whole)
    inputs = next(iterate([{"input_ids": torch.zeros(4, 256, dtype=torch.long)}]))[0]
    assert MICRO_TOKENS == 256 and micro_batch(inputs, "nll") == 1 and micro_batch(inputs, None) is None
    assert micro_batch(inputs, "nll", micro=0) is None and micro_batch(inputs, "nll", micro=2) == 2


def test_statistics_equal_their_direct_formulas_bit_for_bit():
    """The per-layer statistics are computed the fast way; the same values as the direct formulas:
    ``sum g^2 [v != 0]`` (bool mask promoted) on zeros, negative zeros, non-contiguous and bf16
    tensors; the depthwise patch sums from the input itself equal those from ``x`` summed over each
    group's one channel."""
    from quantlens.sweep.estimate import _nonzero_sq, _patch_summer, channel_sums

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.randn(4, 6, 9, 9, generator=gen).to(dtype)
        v = F.relu(torch.randn(4, 6, 9, 9, generator=gen)).to(dtype)
        v[0, 0, 0, :3] = -0.0
        for gg, vv in ((g, v), (g.transpose(2, 3), v.permute(0, 1, 3, 2).contiguous().transpose(2, 3)),
                       (g.to(memory_format=torch.channels_last), v)):
            want = torch.linalg.vecdot((gg * (vv != 0)).reshape(-1), gg.reshape(-1)).double()
            before = gg.clone()
            assert torch.equal(_nonzero_sq(gg, vv), want) and want > 0
            assert torch.equal(gg, before)  # g itself unchanged
    for conv in (nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6), nn.Conv2d(6, 12, 5, padding=2, groups=6),
                 nn.Conv2d(6, 4, 3, groups=2)):
        x = F.relu(torch.randn(3, 6, 11, 11, generator=gen))
        with torch.no_grad():
            gz = torch.randn_like(conv(x))
        s = _patch_summer(conv)
        n, k = x.shape[0], conv.groups
        p = s(x.reshape(n, k, -1, *x.shape[2:]).sum(2))
        want = torch.einsum("ngcp,ngp->ngc", gz.reshape(n, k, -1, p[0, 0].numel()), p.reshape(n, k, -1)).reshape(n, -1)
        assert torch.equal(channel_sums(conv, s, gz, x), want)


def test_per_batch_fold_equals_the_formula_on_the_summed_tensors():
    """The gradient pass folds each batch into per-bit-width sums (no ``D`` or ``G_true`` kept across
    batches): ``sum_batches sum_k r_k^2 g_b,k^2`` and ``sum_batches G_true,b . dW`` equal the old
    formulas on ``D = sum_batches g_b^2`` and ``G_true = sum_batches G_true,b`` up to summation
    order, and the gradients are zeroed for the next batch."""
    from types import SimpleNamespace

    from quantlens.quant.quantizer import quantize_weight
    from quantlens.sweep import estimate
    from quantlens.sweep.api import make_config

    torch.manual_seed(0)
    m = nn.Linear(40, 6)
    w = m.weight.detach()
    cfg = make_config([3, 4], a_bits=None, granularity="per-channel")
    sweep = SimpleNamespace(runner=SimpleNamespace(float_weight=lambda i: w),
                            quantize=lambda i, b: quantize_weight(w, cfg.weight_spec(b)))
    dws = [sweep.quantize(0, b).weight - w for b in (3, 4)]
    mu = torch.stack([d.mean(1) for d in dws], 1)
    gs, ts = [torch.randn(6, 40) for _ in range(3)], [torch.randn(6, 40) for _ in range(3)]
    rest, true_dot = torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for g, t in zip(gs, ts):
        g, t = g.clone(), t.clone()
        estimate._fold_batch(sweep, 0, (3, 4), m, mu, g, t, rest, true_dot)
        assert not g.any() and not t.any()
    diag = sum(g * g for g in gs)
    g_true = sum(ts)
    for j, dw in enumerate(dws):
        want = estimate._diagonal_rest(dw, mu[:, j], diag, diag.sum(1).double(), m)  # the old formula
        r = (dw.double() - mu[:, j].double()[:, None]) ** 2  # and from its definition, in float64
        assert float(rest[j]) == pytest.approx(want, rel=1e-6) == pytest.approx(float((r * diag.double()).sum()), rel=1e-6)
        assert float(true_dot[j]) == pytest.approx(float((g_true.double() * dw.double()).sum()), rel=1e-6)
