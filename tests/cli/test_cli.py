"""The CLI end to end on the demo, and every bad input a user can give it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from quantlens.cli import main


def _write(tmp_path: Path, name: str, body: str) -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return str(p)


@pytest.fixture()
def user_files(tmp_path):
    models = _write(
        tmp_path,
        "user_models.py",
        """
        import torch, torch.nn as nn
        from quantlens.demo.digits import model as demo_model, data as demo_data

        def good():
            return demo_model()

        def not_a_model():
            return 42

        def boom():
            raise RuntimeError("weights missing")

        def no_layers():
            return nn.Flatten()

        class NaN(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(64, 10)
            def forward(self, x):
                return self.fc(x.flatten(1)) * float("nan")

        def nan_model():
            return NaN()

        def data():
            return demo_data(batch_size=225)

        def small_data():
            return demo_data()[:1]

        def empty():
            return []

        def tensor():
            return torch.zeros(3)

        def gen():
            yield from demo_data()[:1]
        """,
    )
    _write(tmp_path, "broken.py", "import nonexistent_package_xyz\n")
    return tmp_path, models


@pytest.mark.slow
def test_cli_analyze_end_to_end(user_files, tmp_path, capsys):
    d, models = user_files
    out = tmp_path / "run"
    rc = main(["analyze", "--model", f"{models}:good", "--data", f"{models}:data", "--w-bits", "3,4,8", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["schema"] == "quantlens/sweep-v1"
    assert res["metric"] == {"name": "top1", "higher_is_better": True}
    assert res["num_samples"] == 450 and 0.9 < res["baseline"] <= 1.0
    assert [l["name"] for l in res["layers"]] == ["conv1", "conv2", "conv3", "fc"]
    assert {"index", "name", "op", "params"} <= set(res["layers"][0])
    assert len(res["cells"]) == 12
    assert {"layer", "w_bits", "a_bits", "noise", "sqnr_db", "metric", "degradation"} <= set(res["cells"][0])
    assert res["cells"][0]["a_bits"] == 8
    csv = (out / "results.csv").read_text().splitlines()
    assert len(csv) == 13 and "degradation" in csv[0]
    printed = capsys.readouterr().out
    assert "worst layers at 4-bit" in printed and "conv1" in printed


@pytest.mark.slow
def test_cli_module_form_and_float_activations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "r"
    rc = main(["analyze", "--model", "quantlens.demo:model", "--data", "quantlens.demo:data", "--a-bits", "none",
               "--w-bits", "4", "--metric", "agreement", "--granularity", "per-channel", "--out", str(out), "--no-progress"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["cells"][0]["a_bits"] is None and res["metric"]["name"] == "agreement"
    assert res["config"]["weight"]["granularity"] == "per-channel"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{m}:missing"], "has no attribute"),
        (["--model", "{d}/broken.py:good"], "importing it failed"),
        (["--model", "no_such_module_q:build"], "cannot import module"),
        (["--model", "{m}"], "expected MOD:FN"),
        (["--model", "{m}:not_a_model"], "expected a torch.nn.Module"),
        (["--model", "{m}:boom"], "weights missing"),
        (["--model", "{m}:no_layers"], "no quantizable layer"),
        (["--model", "{m}:nan_model"], "NaN or Inf"),
        (["--data", "{m}:empty"], "empty"),
        (["--data", "{m}:tensor"], "returned a Tensor"),
        (["--data", "{m}:not_a_model"], "expected an iterable"),
        (["--w-bits", "1,4"], "2..16"),
        (["--w-bits", "4,17"], "2..16"),
        (["--w-bits", "four"], "expected integers"),
        (["--a-bits", "20"], "2..16"),
        (["--a-bits", "x"], "expected an integer"),
        (["--metric", "f1"], "unknown metric"),
        (["--granularity", "per-row"], "granularity"),
        (["--weight-estimator", "magic"], "unknown range estimator"),
    ],
)
def test_cli_bad_input_one_line(user_files, tmp_path, capsys, args, message):
    d, models = user_files
    base = {"--model": f"{models}:good", "--data": f"{models}:small_data"}
    extra = []
    for i in range(0, len(args), 2):
        val = args[i + 1].format(m=models, d=d)
        if args[i] in base:
            base[args[i]] = val
        else:
            extra += [args[i], val]
    argv = ["analyze", "--model", base["--model"], "--data", base["--data"], *extra, "--out", str(tmp_path / "o"), "--no-progress"]
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("quantlens: error:"), err
    assert message in err[0]


def test_cli_generator_data_is_accepted(user_files, tmp_path):
    d, models = user_files
    assert main(["analyze", "--model", f"{models}:good", "--data", f"{models}:gen", "--w-bits", "4", "--out", str(tmp_path / "g"), "--no-progress"]) == 0


def test_cli_out_is_a_file(user_files, tmp_path, capsys):
    d, models = user_files
    f = tmp_path / "afile"
    f.write_text("x")
    rc = main(["analyze", "--model", f"{models}:good", "--data", f"{models}:small_data", "--out", str(f), "--no-progress"])
    assert rc == 2 and "not a directory" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_demo_subprocess(tmp_path):
    """`quantlens demo` as a user runs it: a separate process, the console script's module."""
    out = tmp_path / "demo"
    p = subprocess.run([sys.executable, "-m", "quantlens.cli", "demo", "--out", str(out), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "worst layers at 4-bit" in p.stdout
    res = json.loads((out / "results.json").read_text())
    assert len(res["cells"]) == 4 * 6 and res["num_samples"] == 450


def test_cli_help_and_info(capsys):
    assert main(["info"]) == 0
    assert "sawb" in capsys.readouterr().out
    assert main([]) == 2
