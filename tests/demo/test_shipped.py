"""The demo models ship trained: loading reads the package's safetensors files, never trains and
never touches a cache directory; ``retrain=True`` trains anew with a one-line warning.

Only the slow retraining test trains, and it asserts only what holds for any reasonable
training of the digits CNN (shapes, eval mode, a high held-out accuracy), never its bits.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from quantlens.demo import digits, lm, shipped
from quantlens.errors import QuantlensError, QuantlensWarning

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "src" / "quantlens" / "demo" / "weights"


def _header(path: Path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n])


@pytest.mark.parametrize("name, limit", [(digits.TRAIN_VERSION, 200_000), (lm.LM_VERSION, 4_000_000)])
def test_shipped_files_are_small_float32_with_their_training_recorded(name, limit):
    path = WEIGHTS / f"{name}.safetensors"
    assert path.stat().st_size < limit
    header = _header(path)
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__" and not k.endswith("num_batches_tracked")}
    assert dtypes == {"F32"}
    meta = shipped.metadata(name)
    assert meta["trained_by"].startswith("quantlens.demo.") and meta["torch"] and meta["cpu"] and int(meta["threads"]) >= 1


def test_package_data_declares_the_shipped_files():
    """setuptools installs what ``[tool.setuptools.package-data]`` names: every shipped file must match it."""
    from fnmatch import fnmatch

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["quantlens.demo"]
    files = sorted(p.relative_to(WEIGHTS.parent).as_posix() for p in WEIGHTS.iterdir())
    assert files and all(any(fnmatch(f, g) for g in globs) for f in files), (files, globs)
    assert Path(str(shipped.weights_file(digits.TRAIN_VERSION))).resolve() == WEIGHTS / f"{digits.TRAIN_VERSION}.safetensors"


def test_digits_model_is_the_shipped_state_and_needs_no_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    for var in ("QUANTLENS_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(digits, "_train", lambda *a, **k: pytest.fail("loading the demo model must not train"))
    net = digits.model()
    assert not net.training
    want = load_file(WEIGHTS / f"{digits.TRAIN_VERSION}.safetensors")
    got = net.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert not cache.exists() and not (tmp_path / "home").exists()


def test_digits_model_from_a_given_file(tmp_path):
    other = digits.DigitsCNN()
    with torch.no_grad():
        other.fc.bias.fill_(0.5)
    path = shipped.save(other, tmp_path / "w.safetensors", "a test", threads=1)
    assert torch.equal(digits.model(path=path).fc.bias, torch.full((10,), 0.5))
    assert shipped.metadata("unused", path)["trained_by"] == "a test"


def test_missing_or_foreign_weights_are_one_clear_error(tmp_path):
    with pytest.raises(QuantlensError, match="cannot be read.*retrain"):
        digits.model(path=tmp_path / "nope.safetensors")
    wrong = shipped.save(torch.nn.Linear(2, 2), tmp_path / "linear.safetensors", "a test", threads=1)
    with pytest.raises(RuntimeError, match="state_dict"):  # strict: another architecture's state is refused
        digits.model(path=wrong)


def test_retrain_trains_and_warns_once(monkeypatch):
    """The control flow only: ``_train`` is replaced by an untrained net (no bits asserted)."""
    fresh = digits.DigitsCNN().eval()
    monkeypatch.setattr(digits, "_train", lambda: fresh)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert digits.model(retrain=True) is fresh
    [msg] = [x for x in w if issubclass(x.category, QuantlensWarning)]
    text = str(msg.message)
    assert "\n" not in text and "shipped weights only on the CPU and library build" in text
    assert "torch " in text and msg.filename == __file__  # points at the caller


def test_lm_model_is_the_shipped_state(monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setattr(lm, "_train", lambda *a, **k: pytest.fail("loading the LM demo must not train"))
    net = lm.model()
    want = load_file(WEIGHTS / f"{lm.LM_VERSION}.safetensors")
    got = net.state_dict()
    assert not net.training and got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert sum(v.numel() for v in want.values()) == pytest.approx(0.87e6, rel=0.01)  # docs/llm.md's 0.87M


def test_lm_text_ships_so_the_data_needs_no_docstrings(monkeypatch):
    """The LM demo's train / held-out text is package data: the data never reads this Python's docstrings."""
    assert (WEIGHTS / lm.TEXT).stat().st_size < 200_000
    monkeypatch.setattr(lm, "docstrings", lambda: pytest.fail("the demo's text must come from the shipped file"))
    train, held = lm.split()
    assert len(train) > 1000 and len(held) > 100 and not set(train) & set(held)
    [(batch, labels)] = lm.data(batch_size=2, batches=1)
    assert labels is None and batch["input_ids"].shape == (2, lm.SEQ)
    assert torch.equal(batch["input_ids"][0], lm.encode(held)[: lm.SEQ])


def test_docstrings_ignore_methods_other_packages_patch_on(monkeypatch):
    """``transformers`` adds methods to ``logging.Logger``; the text must not depend on what was imported."""
    import logging

    before = lm.docstrings()

    def warning_twice(self, msg):  # a long enough docstring to count, from another module
        """Log a warning twice, as a package that patches the standard library might offer it."""

    monkeypatch.setattr(logging.Logger, "warning_twice", warning_twice, raising=False)
    assert lm.docstrings() == before


@pytest.mark.slow
def test_cli_retrain_trains_a_working_model(tmp_path, capsys):
    """Real retraining (seconds). Asserts only what any reasonable training of the digits CNN
    gives (the sweep runs, top-1 above 90%), not the shipped weights' bits: those need the same
    CPU and library build."""
    from quantlens.cli import main

    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert main(["demo", "--retrain", "--w-bits", "8", "--out", str(tmp_path), "--no-progress"]) == 0
    assert "training the digits CNN" in capsys.readouterr().out
    assert sum("shipped weights only" in str(x.message) for x in w) == 1
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["baseline"] > 0.9
