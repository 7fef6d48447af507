"""``quantlens compare`` on real demo runs at different settings, different layer sets, bad input."""

from __future__ import annotations

import json

import pytest
from support.report_helpers import EVIL, demo_result, plots, synthetic_result, write_run

from quantlens.cli import main
from quantlens.errors import QuantlensError
from quantlens.report import write_compare
from quantlens.report.compare import merged_layers, run_labels


@pytest.fixture(scope="module")
def runs(demo_model, demo_data, tmp_path_factory):
    """Two real sweeps of the demo: per-tensor min/max against per-channel MSE-clipped weights."""
    from quantlens.sweep.api import make_config

    root = tmp_path_factory.mktemp("cmp")
    a = demo_result(demo_model, demo_data, w_bits=(3, 4, 8))
    b = demo_result(demo_model, demo_data, config=make_config((3, 4, 8), 8, "per-channel", "mse", "minmax"))
    return (a, write_run(a, root / "minmax")), (b, write_run(b, root / "mse"))


def test_compare_two_real_runs(runs, tmp_path):
    (a, da), (b, db) = runs
    assert b.config["weight"]["granularity"] != a.config["weight"]["granularity"]
    out = tmp_path / "cmp" / "compare.html"
    assert main(["compare", str(da), str(db), "--out", str(out)]) == 0
    html = out.read_text()
    for s in ("summary", "profiles", "layers"):
        assert f'<section id="{s}">' in html
    assert "minmax" in html and "mse" in html and "per-channel" in html
    data, layout = plots(html)["plot-compare"]
    assert len(data) == 3 * 2 * 2  # bits x runs x (degradation, SQNR)
    vis = [t for t in data if t["visible"]]
    assert [t["name"] for t in vis] == ["minmax", "minmax", "mse", "mse"]
    assert vis[0]["y"] == pytest.approx([100 * c.degradation for c in a.at(4)])
    assert vis[3]["y"] == pytest.approx([c.sqnr_db for c in b.at(4)])
    table = html[html.index('id="compare-table"'):]
    d = b.cell("conv1", 4).degradation - a.cell("conv1", 4).degradation
    assert f'data-v="{d}"' in table
    summed = sum(max(0.0, c.degradation) for c in b.at(4))
    assert f"At 4 bits, mse sums to {100 * summed:.2f}%" in html


def test_compare_different_layer_sets(runs, tmp_path):
    (a, da), _ = runs
    d = json.loads((da / "results.json").read_text())
    d["layers"] = [l for l in d["layers"] if l["name"] != "conv2"]
    d["cells"] = [c for c in d["cells"] if c["layer"] != "conv2"]
    for l in d["layers"] + d["cells"]:
        key = "name" if "name" in l else "layer"
        if l[key] == "fc":
            l[key] = "head"
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps(d))
    out = write_compare([da, other, da / "results.json"], tmp_path / "c.html", labels=["A", "B", "A again"])
    html = out.read_text()
    data, _ = plots(html)["plot-compare"]
    assert data[0]["x"] == ["conv1", "conv2", "conv3", "head", "fc"]  # a new layer follows its predecessor
    b4 = [t for t in data if t["visible"] and t["name"] == "B"][0]
    assert b4["y"][1] is None and b4["y"][4] is None and b4["y"][3] is not None
    assert "B lacks 2 layer(s): conv2, fc" in html and "A lacks 1 layer(s): head" in html


def test_merged_layers_and_labels(tmp_path):
    r1 = synthetic_result(["a", "b", "c"] + ["d"])
    r2 = synthetic_result(["a", "x", "c", "d"])
    assert merged_layers([r1, r2]) == ["a", "x", "b", "c", "d"]
    assert merged_layers([r2, r1]) == ["a", "b", "x", "c", "d"]
    (tmp_path / "p" / "run").mkdir(parents=True)
    (tmp_path / "q" / "run").mkdir(parents=True)
    assert run_labels([tmp_path / "p" / "run", tmp_path / "q" / "run"]) == ["p/run", "q/run"]


def test_compare_escapes_names(tmp_path):
    write_run(synthetic_result([EVIL, "b", "c", "d"]), tmp_path / "x")
    write_run(synthetic_result(), tmp_path / "y")
    html = write_compare([tmp_path / "x", tmp_path / "y"], tmp_path / "c.html", labels=[EVIL, "</script>"]).read_text()
    assert EVIL not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_compare_errors(runs, tmp_path, capsys):
    (_, da), (_, db) = runs
    assert main(["compare", str(da), "--out", str(tmp_path / "c.html")]) == 2
    assert "at least two runs" in capsys.readouterr().err
    assert main(["compare", str(da), str(tmp_path / "missing"), "--out", str(tmp_path / "c.html")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(da), str(db), "--out", str(tmp_path)]) == 2
    assert "is a directory: give a file name such as" in capsys.readouterr().err
    with pytest.raises(QuantlensError, match="--labels has 1 names for 2 runs"):
        write_compare([da, db], tmp_path / "c.html", labels=["one"])
