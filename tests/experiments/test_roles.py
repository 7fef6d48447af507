"""Roles of repeated blocks: naming, the role x block view, --group-by role, plan by role."""

from __future__ import annotations

import json

import pytest

from support.lm_models import lm_user_file, tiny_lm, token_data
from support.models import tiny_data, tiny_net
from quantlens.sweep.api import analyze, make_config
from quantlens.network.measure import quantize_network
from quantlens.experiments.role_sweep import analyze_roles
from quantlens.errors import QuantlensError
from quantlens.core.layer_config import QuantConfig
from quantlens.report.roles import role_view, worst_roles
from quantlens.core.roles import assign_roles, require_roles, split_name
from quantlens.core.workload import Workload


def test_role_and_block_from_the_qualified_name():
    assert split_name("model.layers.7.mlp.down_proj") == ("model.layers", 7, "mlp.down_proj")
    assert split_name("transformer.h.11.attn.c_attn") == ("transformer.h", 11, "attn.c_attn")
    assert split_name("lm_head") is None and split_name("features.3") is None
    names = [f"model.layers.{i}.{r}" for i in range(3) for r in ("self_attn.q_proj", "mlp.down_proj")] + ["lm_head"]
    r = assign_roles(names)
    assert r.roles == ("self_attn.q_proj", "mlp.down_proj")
    assert r.layers("mlp.down_proj") == [f"model.layers.{i}.mlp.down_proj" for i in range(3)]
    assert r.role_of("model.layers.2.self_attn.q_proj") == ("self_attn.q_proj", 2)
    assert r.loose == ("lm_head",) and r.block_ids == (0, 1, 2)


def test_two_stacks_with_the_same_role_names_keep_their_container():
    names = [f"{s}.layer.{i}.ffn.out" for s in ("encoder", "decoder") for i in range(2)]
    assert assign_roles(names).roles == ("encoder.layer.*.ffn.out", "decoder.layer.*.ffn.out")


def test_no_repeated_blocks_is_one_line_that_lists_the_layers():
    names = [l for l in ("stem", "b1", "fc1", "fc2")]
    with pytest.raises(QuantlensError, match=r"no repeated blocks.*layers are: stem, b1, fc1, fc2") as e:
        require_roles(names)
    assert "\n" not in str(e.value)
    with pytest.raises(QuantlensError, match="no repeated blocks"):
        analyze_roles(Workload(tiny_net(), tiny_data(1), metric="kl"), config=make_config([4]))


def test_role_view_arranges_the_layer_cells():
    r = analyze(tiny_lm(), token_data(), w_bits=[4, 8], a_bits=8, metric="perplexity", granularity="per-group-8")
    v = role_view(r, 4)
    assert v is not None and v.roles == ("q_proj", "o_proj", "up_proj", "down_proj") and v.blocks == (0, 1, 2)
    for role, row in zip(v.roles, v.matrix):
        for b, d in zip(v.blocks, row):
            assert d == r.cell(f"layers.{b}.{role}", 4).degradation
    worst = worst_roles(r, 4, k=2)
    totals = sorted(((ro, v.total(ro)) for ro in v.roles), key=lambda t: -t[1])
    assert worst == totals[:2]


def test_role_cell_is_the_whole_network_measurement_of_the_role():
    model, data = tiny_lm(), token_data()
    r = analyze_roles(Workload(model, data, metric="token_kl"), config=make_config([4, 6], 8, "per-group-8"))
    assert r.layer_names == ["q_proj", "o_proj", "up_proj", "down_proj"]
    assert r.extra["roles"]["down_proj"] == [f"layers.{i}.down_proj" for i in range(3)]
    assert {l.name: l.params for l in r.layers}["down_proj"] == sum(b.down_proj.weight.numel() for b in model.layers)
    direct = quantize_network(model, data, QuantConfig.uniform(r.extra["roles"]["down_proj"], 4, 8, "per-group-8"), metric="token_kl")
    c = r.cell("down_proj", 4)
    assert c.degradation == direct.degradation and c.noise == direct.noise
    assert r.cell("down_proj", 6).degradation < c.degradation


def test_cli_group_by_role_and_plan_by_role(tmp_path, capsys):
    from quantlens.cli import main

    f = lm_user_file(tmp_path)
    out = tmp_path / "roles"
    assert main(["analyze", "--model", f"{f}:model", "--data", f"{f}:data", "--metric", "perplexity", "--w-bits", "4,8",
                 "--granularity", "per-group-8", "--group-by", "role", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["extra"]["group_by"] == "role" and len(res["cells"]) == 4 * 2
    assert "Roles" in (out / "report.html").read_text()
    plan = tmp_path / "plan"
    assert main(["plan", "--model", f"{f}:model", "--data", f"{f}:data", "--metric", "perplexity", "--w-bits", "4,8",
                 "--granularity", "per-group-8", "--budget", "6", "--results", str(out), "--out", str(plan)]) == 0
    p = json.loads((plan / "plan.json").read_text())
    assert p["group_by"] == "role"
    for role, bits in p["w_bits"].items():
        for layer in res["extra"]["roles"][role]:
            assert p["layer_bits"][layer] == bits


def test_cli_layer_sweep_prints_worst_roles_and_report_has_the_role_view(tmp_path, capsys):
    from quantlens.cli import main

    f = lm_user_file(tmp_path)
    out = tmp_path / "layers"
    assert main(["analyze", "--model", f"{f}:model", "--data", f"{f}:data", "--metric", "perplexity", "--w-bits", "3,4",
                 "--out", str(out), "--no-progress", "--no-cache"]) == 0
    text = capsys.readouterr().out
    assert "worst roles at 4-bit" in text
    html = (out / "report.html").read_text()
    assert "Roles x blocks" in html and "plot-roles" in html and "All layers" in html


def test_cli_group_by_role_without_blocks_is_one_line(tmp_path, capsys):
    from support.models import user_file
    from quantlens.cli import main

    f = user_file(tmp_path, 1)
    rc = main(["analyze", "--model", f"{f}:model", "--data", f"{f}:data", "--metric", "kl", "--group-by", "role",
               "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and "no repeated blocks" in err and "stem" in err
