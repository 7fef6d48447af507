"""The cone engine equals the naive full-forward loop (an independent oracle) to 1e-5."""

from __future__ import annotations


import pytest
import torch
from support.models import DictOut, NaNOut, NoLayers, TinyNet, Untraceable, tiny_data, tiny_net
from support.oracle import naive_sweep

import quantlens as ql
from quantlens.errors import QuantlensError
from quantlens.core.guard import state_fingerprint
from support.helpers import close


def _close(a, b, rel=1e-5, abs_=1e-9):
    return close(a, b, rel, abs_)


@pytest.mark.parametrize("a_bits", [8, None])
def test_cone_engine_equals_naive_oracle(a_bits):
    m, data = tiny_net(), tiny_data(n_batches=3)
    bits = (3, 5, 8)
    r = ql.analyze(m, data, w_bits=bits, a_bits=a_bits, metric="agreement")
    ref = naive_sweep(m, data, bits, a_bits)
    assert len(r.cells) == 8 * 3
    for c in r.cells:
        noise, sqnr, agree = ref[(c.layer, c.w_bits)]
        assert _close(c.noise, noise), (c.layer, c.w_bits, c.noise, noise)
        assert _close(c.sqnr_db, sqnr), (c.layer, c.w_bits)
        assert c.metric == pytest.approx(agree, abs=1e-12)
        assert c.degradation == pytest.approx(1.0 - agree, abs=1e-12)
        assert c.a_bits == a_bits
    assert r.baseline == 1.0


@pytest.mark.parametrize("engine", ["naive", "hooks"])
def test_other_engines_agree_with_cone(engine):
    m, data = tiny_net(), tiny_data(n_batches=2)
    r = ql.analyze(m, data, w_bits=(4,), metric="kl")
    r2 = ql.analyze(m, data, w_bits=(4,), metric="kl", engine=engine)
    # hooks: BatchNorm folding and activation fusion found eagerly, so the same quantization
    assert [(l.name, l.activation) for l in r2.layers] == [(l.name, l.activation) for l in r.layers]
    for a, b in zip(r.cells, r2.cells):
        assert _close(a.noise, b.noise) and _close(a.metric, b.metric, abs_=1e-12)


@pytest.mark.slow
def test_every_metric_equals_the_oracle_and_ranks():
    m, data = tiny_net(), tiny_data(n_batches=2)
    for metric in ("top1", "top5", "agreement", "kl", "mse", "cosine"):
        r = ql.analyze(m, data, w_bits=(3, 8), metric=metric)
        ref = naive_sweep(m, data, (3, 8), 8, metric=metric)
        assert r.metric_name == metric
        for c in r.cells:
            want = ref[(c.layer, c.w_bits)][3]
            assert _close(c.metric, want, rel=1e-5, abs_=1e-9), (metric, c.layer, c.w_bits, c.metric, want)
        if metric in ("kl", "mse"):
            assert not r.higher_is_better and r.baseline == pytest.approx(0.0, abs=1e-12)
            # lower-is-better metrics: degradation = H(y_i) - H(y) >= 0
            assert all(c.degradation >= 0 for c in r.cells)
        if metric == "cosine":
            assert r.baseline == pytest.approx(1.0)


def test_custom_callable_metric():
    m, data = tiny_net(), tiny_data(n_batches=2)

    def neg_l1(y_ref, y, labels):
        return -float((y - y_ref).abs().mean())

    r = ql.analyze(m, data, w_bits=(4,), metric=neg_l1)
    assert r.metric_name == "neg_l1" and r.baseline == 0.0
    assert all(c.degradation > 0 for c in r.cells)


def test_dict_output_and_output_key():
    m, data = DictOut().eval(), tiny_data(n_batches=2)
    r1 = ql.analyze(m, data, w_bits=(4,), metric="kl", output_key="logits")
    r2 = ql.analyze(m.net, data, w_bits=(4,), metric="kl")
    for a, b in zip(r1.cells, r2.cells):
        assert _close(a.noise, b.noise)
    with pytest.raises(QuantlensError, match="no entry"):
        ql.analyze(m, data, w_bits=(4,), metric="kl", output_key="nope")


def test_per_channel_and_estimators_run():
    m, data = tiny_net(), tiny_data(n_batches=2)
    r = ql.analyze(m, data, w_bits=(4,), granularity="per-channel", weight_estimator="mse", act_estimator="percentile", metric="kl")
    t = ql.analyze(m, data, w_bits=(4,), metric="kl")
    assert sum(c.noise for c in r.cells) < sum(c.noise for c in t.cells)


def test_separate_calibration_data_changes_ranges():
    m, data = tiny_net(), tiny_data(n_batches=2)
    calib = [(x * 0.1, y) for x, y in data]
    r1 = ql.analyze(m, data, w_bits=(8,), metric="kl")
    r2 = ql.analyze(m, data, w_bits=(8,), metric="kl", calib=calib)
    assert sum(c.noise for c in r2.cells) > sum(c.noise for c in r1.cells)


def test_hooks_fallback_warns_and_matches_oracle_on_untraceable():
    m, data = Untraceable().eval(), tiny_data(n_batches=2)
    with pytest.warns(ql.QuantlensWarning, match="cannot trace"):
        r = ql.analyze(m, data, w_bits=(4,), a_bits=None, metric="kl")
    assert r.engine == "hooks" and [l.name for l in r.layers] == ["conv", "fc"]
    # oracle: weight replaced by torch's fake quantization, full forward
    for c in r.cells:
        q = __import__("copy").deepcopy(m)
        mod = q.get_submodule(c.layer)
        s = float(torch.tensor(float(mod.weight.abs().max()) / 7, dtype=torch.float32))
        mod.weight.data = torch.fake_quantize_per_tensor_affine(mod.weight.data, s, 0, -8, 7)
        noise = sum(float(((m(x) - q(x)) ** 2).sum()) for x, _ in data) / 16
        assert _close(c.noise, noise, rel=1e-4)


def test_model_is_left_unchanged():
    m = TinyNet().train()
    handle = m.register_forward_hook(lambda *a: None)
    before = state_fingerprint(m)
    hooks_before = dict(m._forward_hooks)
    ql.analyze(m, tiny_data(n_batches=1), w_bits=(3,), metric="kl")
    after = m.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert m.training and all(x.training for x in m.modules())
    assert dict(m._forward_hooks) == hooks_before
    assert all(p.requires_grad for p in m.parameters())
    handle.remove()


def test_results_roundtrip_and_queries(tmp_path):
    r = ql.analyze(tiny_net(), tiny_data(n_batches=1), w_bits=(3, 4), metric="kl")
    path = tmp_path / "results.json"
    r.to_json(path)
    back = ql.SweepResult.from_json(path)
    assert back == r or back.to_dict() == r.to_dict()
    assert ql.SweepResult.from_json(tmp_path).cells == back.cells
    worst = r.worst(bits=3, k=3)
    assert len(worst) == 3 and worst[0].degradation >= worst[1].degradation >= worst[2].degradation
    df = r.to_dataframe()
    assert len(df) == 16 and set(["layer", "w_bits", "noise", "sqnr_db", "degradation"]) <= set(df.columns)
    assert abs(sum(r.share(3).values()) - 1.0) < 1e-9
    with pytest.raises(QuantlensError, match="no results at"):
        r.at(7)


def test_layer_statistics_in_results():
    r = ql.analyze(tiny_net(), tiny_data(n_batches=1), w_bits=(4,), metric="kl")
    dw = next(l for l in r.layers if l.name == "dw")
    assert dw.kind == "depthwise" and dw.activation == "ReLU6"
    assert dw.weight is not None and sum(dw.weight.hist_counts) == dw.params
    assert dw.output_range[0] >= 0.0 and dw.output_range[1] <= 6.0
    c = r.cell("dw", 4)
    want = naive_sweep(tiny_net(), tiny_data(n_batches=1), (4,), 8, layer_names=["dw"], metric="kl")[("dw", 4)][4]
    assert want > 0 and _close(c.mean_shift, want, rel=1e-4), (c.mean_shift, want)
    assert c.w_clip == pytest.approx(dw.weight.absmax, rel=1e-6)


# ---- errors a user can hit -------------------------------------------------------------------
def test_empty_data():
    with pytest.raises(QuantlensError, match="empty"):
        ql.analyze(tiny_net(), [], w_bits=(4,))


def test_one_shot_iterator_refused():
    with pytest.raises(QuantlensError, match="one-shot"):
        ql.analyze(tiny_net(), iter(tiny_data()), w_bits=(4,))


def test_bad_batches():
    with pytest.raises(QuantlensError, match="batch 0"):
        ql.analyze(tiny_net(), ["abc"], w_bits=(4,))
    with pytest.raises(QuantlensError, match="must be an iterable"):
        ql.analyze(tiny_net(), 3, w_bits=(4,))  # type: ignore[arg-type]


def test_labels_needed():
    data = [(x, None) for x, _ in tiny_data(n_batches=1)]
    with pytest.raises(QuantlensError, match="needs labels"):
        ql.analyze(tiny_net(), data, w_bits=(4,), metric="top1")


@pytest.mark.parametrize("bits", [(1,), (17,), (4, 40)])
def test_bits_outside_range(bits):
    with pytest.raises(QuantlensError, match="2..16"):
        ql.analyze(tiny_net(), tiny_data(n_batches=1), w_bits=bits)
    with pytest.raises(QuantlensError, match="2..16"):
        ql.analyze(tiny_net(), tiny_data(n_batches=1), w_bits=(4,), a_bits=bits[-1])


def test_no_quantizable_layer():
    with pytest.raises(QuantlensError, match="no quantizable layer"):
        ql.analyze(NoLayers(), tiny_data(n_batches=1), metric="kl")


def test_nan_output():
    with pytest.raises(QuantlensError, match="NaN or Inf"):
        ql.analyze(NaNOut(), tiny_data(n_batches=1), metric="kl")


def test_unknown_metric_and_layer():
    with pytest.raises(QuantlensError, match="unknown metric"):
        ql.analyze(tiny_net(), tiny_data(n_batches=1), metric="f1")
    with pytest.raises(QuantlensError, match="unknown layer"):
        ql.analyze(tiny_net(), tiny_data(n_batches=1), metric="kl", layers=["nope"])
    with pytest.raises(QuantlensError, match="layer selection is empty"):
        ql.analyze(tiny_net(), tiny_data(n_batches=1), metric="kl", layers=[])


def test_cuda_requested_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(QuantlensError, match="no CUDA"):
        ql.analyze(tiny_net(), tiny_data(n_batches=1), metric="kl", device="cuda")


def test_analysis_mode_restores_tf32_flags():
    from quantlens.core.numerics import analysis_mode

    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = True
    try:
        with pytest.raises(RuntimeError):
            with analysis_mode():
                assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
                assert torch.is_inference_mode_enabled()
                raise RuntimeError("boom")
        assert torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
