"""``benchmarks.gpu_check --llm`` on the CPU at toy sizes: the stages, the budget's skips, out of
memory recorded per stage, the parent's kill at the budget and its one JSON file."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check, gpu_llm

ROOT = Path(__file__).resolve().parent.parent
SMALL = gpu_llm.Options(device="cpu", tiny=True, seqs=2, tokens=16, batch=2, formats=("nvfp4", "int4-g128"), k=1,
                        budget_s=600.0)


def test_sample_layers_first_middle_last_block_and_head():
    names = [f"model.layers.{b}.{p}" for b in range(5) for p in ("q_proj", "down_proj")] + ["lm_head"]
    assert gpu_llm.sample_layers(names) == ["model.layers.0.q_proj", "model.layers.0.down_proj", "model.layers.2.q_proj",
                                            "model.layers.2.down_proj", "model.layers.4.q_proj", "model.layers.4.down_proj",
                                            "lm_head"]


def test_tiny_shapes_keep_the_layouts():
    for name, shape in gpu_llm.TINY.items():
        full = gpu_llm.SHAPES[name]
        assert shape["tie_word_embeddings"] == full["tie_word_embeddings"]
        gqa = full["num_attention_heads"] != full["num_key_value_heads"]
        assert (shape["num_attention_heads"] != shape["num_key_value_heads"]) == gqa


@pytest.mark.slow
def test_every_stage_on_a_tiny_llama(tmp_path):
    path = tmp_path / "part.json"
    rec = gpu_llm.run_subject("llama-1b", SMALL, path)
    assert json.loads(path.read_text()) == json.loads(json.dumps(rec))
    assert rec["errors"] == {} and rec["skipped"] == {} and rec["running"] is None
    st = rec["stages"]
    layers = 2 * 7 + 1  # two blocks of seven Linears, and lm_head (tied to the embedding)
    assert st["build"]["linear_layers"] == layers and st["build"]["dtype"] == "torch.bfloat16"
    assert st["float"]["tokens"] == 32
    cvn = st["cone_vs_naive"]
    assert cvn["layers"] == layers and cvn["max_rel_diff"] <= 1e-3  # both blocks are first/middle/last here
    assert st["estimate"]["cells"] == st["exact"]["cells"] == 2 * layers
    assert 1 <= st["estimate"]["checked_cells"] <= 3  # k = 1: of the top, boundary and random layer, what the time budget allows
    assert set(st["exact"]["spearman_estimate_vs_exact"]) == {"nvfp4", "int4-g128"}
    for s in st.values():
        assert s["seconds"] > 0 and s["peak_rss_gib"] > 0


def test_out_of_memory_is_recorded_per_stage_and_the_next_stage_runs(monkeypatch):
    import quantlens

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(quantlens, "analyze", oom)
    rec = gpu_llm.run_subject("llama-7b", SMALL)
    assert set(rec["stages"]) == {"build", "float"}
    assert set(rec["errors"]) == {"cone_vs_naive", "estimate", "exact"}
    assert all(e.startswith("out of memory after ") and "Tried to allocate 20.00 GiB" in e for e in rec["errors"].values())


def test_a_build_that_fails_ends_the_subject_with_its_reason(monkeypatch):
    def boom(name, opts):
        raise MemoryError("host memory")

    monkeypatch.setattr(gpu_llm, "build", boom)
    rec = gpu_llm.run_subject("llama-7b", SMALL)
    assert rec["stages"] == {} and rec["errors"] == {"build": "out of memory after 0.0 s: host memory"}


def test_stages_that_would_not_fit_the_budget_are_skipped_with_the_reason():
    import dataclasses

    rec = gpu_llm.run_subject("llama-1b", dataclasses.replace(SMALL, budget_s=5.0))
    assert set(rec["stages"]) == {"build", "float"} and rec["errors"] == {}
    assert set(rec["skipped"]) == {"cone_vs_naive", "estimate", "exact"}
    assert all(r.startswith("predicted ") and "of the subject's 5 s budget left" in r for r in rec["skipped"].values())


def test_the_parent_kills_a_subject_at_its_budget_and_writes_one_json(tmp_path):
    out = tmp_path / "llm.json"
    cmd = [sys.executable, "-m", "benchmarks.gpu_check", "--llm", "--device", "cpu", "--tiny", "--subjects", "llama-7b",
           "--budget", "0.5", "--json", str(out)]
    p = subprocess.run(cmd, check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    d = json.loads(out.read_text())
    assert d["schema"] == "quantlens/gpu-check-llm-v1" and d["device"] == "cpu" and d["gpu"] is None
    (s,) = d["subjects"]
    assert s["subject"] == "llama-7b" and s["status"].startswith("killed at its budget") and s["budget_s"] == 0.5
    assert not list(tmp_path.glob("*.part.json"))


def test_without_cuda_the_gpu_run_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main(["--llm", "--json", "unused.json"]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        gpu_llm.main(["--device", "cpu", "--subjects", "llama-70b"])


def test_the_plans_cone_arithmetic_matches_flops_counted_on_a_llama_graph():
    """benchmarks.llm_plan's formula against torch's FLOP counter on each captured cone (eager
    attention: with sdpa the counter misses the attention of some graphs)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from benchmarks import llm_plan
    from benchmarks.flops import cone_fraction
    from quantlens.core.inputs import Inputs

    cfg = LlamaConfig(hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, vocab_size=300, max_position_embeddings=64, use_cache=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    measured = cone_fraction(model, Inputs((), {"input_ids": torch.randint(0, 300, (1, 24))}))
    full, cones = llm_plan.cones(64, 172, 24, 300, 2, dkv=32)
    assert measured["full_flops"] == 24 * full
    assert measured["cone_flops"] == [24 * c for c in cones]
