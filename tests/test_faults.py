"""Faults: two runs on one directory at once, a full disk, a cache from another version."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import quantlens as ql
import quantlens.core.jsonio as jsonio
from support.models import tiny_data, tiny_net, user_file
from quantlens.cli import main
from quantlens.errors import QuantlensError
from quantlens.parallel.lock import LOCK_NAME, DirLock, pid_alive
from quantlens.parallel.store import CheckpointStore

SRC = str(Path(ql.__file__).resolve().parents[1])


def _holder(directory: Path):
    """Another process that holds quantlens's lock on ``directory`` until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {SRC!r})
        from quantlens.parallel.lock import hold
        hold({str(directory)!r}, "--out")
        print("held", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def _analyze_cli(user: str, out: Path, *more: str) -> list[str]:
    return ["analyze", "--model", user + ":model", "--data", user + ":data", "--w-bits", "4", "--metric", "kl",
            "--out", str(out), "--no-progress", *more]


def _one_line(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.startswith("quantlens: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_second_run_on_the_same_out_is_refused_and_corrupts_nothing(tmp_path, capsys):
    user = user_file(tmp_path, n_batches=1)
    out = tmp_path / "out"
    assert main(_analyze_cli(user, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert LOCK_NAME not in before  # released when the command ended
    holder = _holder(out)
    try:
        capsys.readouterr()
        assert main(_analyze_cli(user, out, "--w-bits", "3")) == 2
        line = _one_line(capsys.readouterr().err)
        assert f"--out {out} is in use by another quantlens run (pid {holder.pid})" in line
        assert (out / LOCK_NAME).read_text() == str(holder.pid)  # the holder's lock is untouched
        after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != LOCK_NAME}
        assert after == before
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its stale lock is taken over
    assert not pid_alive(holder.pid)
    assert main(_analyze_cli(user, out)) == 0
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_second_run_on_the_same_cache_is_refused(tmp_path):
    data = tiny_data(n_batches=2)
    cache = tmp_path / "cache"
    cache.mkdir()
    holder = _holder(cache)
    try:
        with pytest.raises(QuantlensError, match=rf"--cache {cache} is in use by another quantlens run \(pid {holder.pid}\)"):
            ql.analyze(tiny_net(), data, w_bits=(4,), metric="kl", cache=cache)
        assert sorted(p.name for p in cache.iterdir()) == [LOCK_NAME]  # nothing written into the holder's cache
    finally:
        holder.kill()
        holder.wait()
    r = ql.analyze(tiny_net(), data, w_bits=(4,), metric="kl", cache=cache)  # stale lock taken over
    assert r.cells == ql.analyze(tiny_net(), data, w_bits=(4,), metric="kl").cells
    assert not cache.exists()


def test_lock_in_one_process_and_release():
    import tempfile

    d = Path(tempfile.mkdtemp())
    with DirLock(d, "--out"):
        with pytest.raises(QuantlensError, match="in use by another quantlens run"):
            DirLock(d, "--out").acquire()
    assert not (d / LOCK_NAME).exists()
    (d / LOCK_NAME).write_text("not a pid")  # a torn lock file: stale
    with DirLock(d, "--out"):
        assert (d / LOCK_NAME).read_text().isdigit()


def _disk_full(monkeypatch, when=lambda text: True):
    real = jsonio._write

    def write(f, text):
        if when(text):
            f.write(text[: len(text) // 2])  # part of it reached the disk before it filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        real(f, text)

    monkeypatch.setattr(jsonio, "_write", write)


@pytest.mark.slow
def test_disk_full_while_writing_results_keeps_the_earlier_files(tmp_path, capsys, monkeypatch):
    user = user_file(tmp_path, n_batches=1)
    out = tmp_path / "out"
    assert main(_analyze_cli(user, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert {"results.json", "results.csv"} <= set(before)
    _disk_full(monkeypatch)
    capsys.readouterr()
    assert main(_analyze_cli(user, out, "--w-bits", "3")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "the disk is full (No space left on device)" in line and "is intact" in line
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # no half-written file, no temporary left, the earlier results as they were
    assert json.loads(after["results.json"])["config"]["w_bits"] == [4]


def test_disk_full_while_writing_a_checkpoint_keeps_the_last_one(tmp_path, monkeypatch):
    store = CheckpointStore.open(tmp_path / "c", {"version": ql.__version__, "model": "m"})
    store.save("serial", {"batches_done": 1})
    _disk_full(monkeypatch)
    with pytest.raises(QuantlensError, match=r"cannot write .*serial\.json: the disk is full .*any earlier serial\.json is intact"):
        store.save("serial", {"batches_done": 2})
    assert store.load("serial") == {"batches_done": 1}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [LOCK_NAME, "header.json", "serial.json", "tasks"]
    store.clear()
    assert not (tmp_path / "c").exists()


def test_disk_full_mid_sweep_leaves_a_resumable_cache(tmp_path, monkeypatch):
    data = tiny_data(n_batches=3)
    cache = tmp_path / "cache"
    calls = {"n": 0}

    def second_checkpoint(text):
        if '"batches_done"' in text or '"batch_hashes"' in text:
            calls["n"] += 1
            return calls["n"] == 2
        return False

    _disk_full(monkeypatch, second_checkpoint)
    with pytest.raises(QuantlensError, match="the disk is full"):
        ql.analyze(tiny_net(), data, w_bits=(4,), metric="kl", cache=cache)
    saved = json.loads((cache / "serial.json").read_text())
    assert len(saved["batch_hashes"]) == 1  # the checkpoint before the failed one, whole
    assert not (cache / LOCK_NAME).exists()  # the failed run let go of its cache
    monkeypatch.undo()
    with pytest.warns(ql.QuantlensWarning, match="resuming"):
        r = ql.analyze(tiny_net(), data, w_bits=(4,), metric="kl", cache=cache)
    assert r.cells == ql.analyze(tiny_net(), data, w_bits=(4,), metric="kl").cells


@pytest.mark.slow
@pytest.mark.parametrize("old", [{"version": "0.0.9"}, {}])
def test_cache_from_another_version_is_refused_in_one_line(tmp_path, capsys, old):
    data = tiny_data(n_batches=2)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        ql.analyze(tiny_net(), _Failing(data), w_bits=(4,), metric="kl", cache=cache)
    header = json.loads((cache / "header.json").read_text())
    assert header["version"] == ql.__version__
    header.pop("version")
    (cache / "header.json").write_text(json.dumps({**header, **old}))
    by = "quantlens 0.0.9" if old else "an older quantlens version"
    with pytest.raises(QuantlensError, match=f"the cache in {cache} was written by {by}, this is quantlens {ql.__version__}: rerun with --fresh"):
        ql.analyze(tiny_net(), data, w_bits=(4,), metric="kl", cache=cache)
    user = user_file(tmp_path, n_batches=2)
    capsys.readouterr()
    assert main(_analyze_cli(user, tmp_path / "out", "--cache", str(cache))) == 2
    assert f"was written by {by}" in _one_line(capsys.readouterr().err)
    assert main(_analyze_cli(user, tmp_path / "out", "--cache", str(cache), "--fresh")) == 0


class _Failing:
    """Re-iterable data whose sweep pass (the third) fails after one batch."""

    def __init__(self, batches):
        self.batches, self.iters = batches, 0

    def __iter__(self):
        self.iters += 1
        for k, b in enumerate(self.batches):
            if self.iters == 3 and k == 1:
                raise RuntimeError("crash")
            yield b


def test_pid_alive():
    assert pid_alive(__import__("os").getpid())
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    time.sleep(0.05)
    assert not pid_alive(p.pid)
