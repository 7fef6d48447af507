"""Resumable runs: SIGKILL mid-run then rerun gives the uninterrupted results; caches of other
runs are refused; the default path never imports Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.models import tiny_data, tiny_net, user_file

import quantlens as ql
from quantlens.errors import QuantlensError
from support.helpers import FailingData

TESTS = Path(__file__).resolve().parents[1]


def _cells(path: Path) -> list:
    d = json.loads(path.read_text())
    return [d["num_samples"], d["baseline"], d["cells"]]


def _user_file(tmp_path: Path, n_batches: int) -> str:
    return user_file(tmp_path, n_batches, batch=16, hw=16)


def _cli(user: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "quantlens.cli", "analyze", "--model", f"{user}:model", "--data", f"{user}:data",
            "--metric", "kl", "--w-bits", "3-8", "--out", str(out), "--no-progress", *extra]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    user = _user_file(tmp_path, n_batches=40)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = subprocess.run(_cli(user, tmp_path / "ref", "--no-cache"), capture_output=True, text=True, env=env, timeout=120)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "run"
    ckpt = out / ".quantlens-cache" / "serial.json"
    proc = subprocess.Popen(_cli(user, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    done = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = len(json.loads(ckpt.read_text())["batch_hashes"])
        except (OSError, ValueError, KeyError):
            done = 0
        if done >= 3:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "results.json").exists()
    saved = len(json.loads(ckpt.read_text())["batch_hashes"])
    assert 3 <= saved < 40
    again = subprocess.run(_cli(user, out), capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"resuming from the cache in {out / '.quantlens-cache'}: {saved} batch(es) already done" in again.stderr
    assert _cells(out / "results.json") == _cells(tmp_path / "ref" / "results.json")
    assert not (out / ".quantlens-cache").exists()  # removed once the sweep finished



def _crash_leaving_cache(cache: Path, data) -> None:
    # passes over data: 1 sample, 2 calibration, 3 the sweep: crash there after 2 batches
    with pytest.raises(RuntimeError, match="crash"):
        ql.analyze(tiny_net(), FailingData(data, 2, 3), w_bits=(3, 5), metric="kl", cache=cache)
    assert len(json.loads((cache / "serial.json").read_text())["batch_hashes"]) == 2


def test_resume_in_process_and_refusals(tmp_path):
    data = tiny_data(n_batches=5)
    ref = ql.analyze(tiny_net(), data, w_bits=(3, 5), metric="kl")
    cache = tmp_path / "cache"
    _crash_leaving_cache(cache, data)
    cases = [
        (dict(model=tiny_net(seed=1), data=data, w_bits=(3, 5)), "different model weights"),
        (dict(model=tiny_net(), data=data, w_bits=(3, 6)), "different quantization settings"),
        (dict(model=tiny_net(), data=tiny_data(n_batches=5, seed=3), w_bits=(3, 5)), "different data"),
        (dict(model=tiny_net(), data=data[:1] + tiny_data(n_batches=4, seed=4), w_bits=(3, 5)), "batch 1 of the data differs"),
    ]
    for kw, message in cases:
        with pytest.raises(QuantlensError, match=message):
            ql.analyze(kw["model"], kw["data"], w_bits=kw["w_bits"], metric="kl", cache=cache)
    with pytest.raises(QuantlensError, match="different metric"):
        ql.analyze(tiny_net(), data, w_bits=(3, 5), metric="mse", cache=cache)
    with pytest.warns(ql.QuantlensWarning, match="2 batch"):
        resumed = ql.analyze(tiny_net(), data, w_bits=(3, 5), metric="kl", cache=cache)
    assert resumed.num_samples == ref.num_samples and resumed.cells == ref.cells and resumed.baseline == ref.baseline
    assert not cache.exists()


def test_fresh_discards_and_foreign_directory_is_kept(tmp_path):
    data = tiny_data(n_batches=4)
    cache = tmp_path / "cache"
    _crash_leaving_cache(cache, data)
    r = ql.analyze(tiny_net(seed=1), data, w_bits=(3, 5), metric="kl", cache=cache, fresh=True)
    assert r.cells == ql.analyze(tiny_net(seed=1), data, w_bits=(3, 5), metric="kl").cells
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(QuantlensError, match="not a quantlens cache"):
        ql.analyze(tiny_net(), data, w_bits=(3,), metric="kl", cache=foreign)
    assert (foreign / "notes.txt").exists()


@pytest.mark.slow
def test_default_path_never_imports_ray(tmp_path):
    user = _user_file(tmp_path, n_batches=1)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import quantlens as ql
        from quantlens.cli import main
        from support.models import tiny_data, tiny_net
        ql.analyze(tiny_net(), tiny_data(n_batches=1), w_bits=(4,), metric="kl", cache={str(tmp_path / 'c')!r})
        assert main(["analyze", "--model", {user + ':model'!r}, "--data", {user + ':data'!r}, "--w-bits", "4",
                     "--metric", "kl", "--out", {str(tmp_path / 'o')!r}, "--no-progress"]) == 0
        assert "ray" not in sys.modules, sorted(m for m in sys.modules if m.startswith("ray"))
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]


def test_cache_options_conflict(tmp_path, capsys):
    from quantlens.cli import main

    user = _user_file(tmp_path, n_batches=1)
    rc = main(["analyze", "--model", f"{user}:model", "--data", f"{user}:data", "--out", str(tmp_path),
               "--cache", str(tmp_path / "c"), "--no-cache", "--no-progress"])
    assert rc == 2 and "contradict" in capsys.readouterr().err
