"""One capture per model: the capture cache in memory and on disk (``--capture-cache DIR``).

The oracle of every cached capture is a fresh capture of the same model (the cache emptied):
the outputs and the sweep's cells must be bitwise equal, the user's model untouched.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import quantlens as ql
from quantlens.core.fingerprint import sample_signature, structure_hash
from quantlens.core.inputs import Inputs
from quantlens.errors import QuantlensError, QuantlensWarning
from quantlens.graph import capture_cache as cc
from quantlens.graph.capture import CaptureError, capture, fx_capture
from quantlens.graph.capture_cache import CaptureCache, capture_cache, use_capture_cache
from quantlens.graph.export import export_program

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support.lm_models import llama_ids, tiny_llama  # noqa: E402
from support.lm_models import tiny_lm, token_data  # noqa: E402
from support.models import Untraceable, tiny_data, tiny_net  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(autouse=True)
def empty_cache():
    capture_cache().clear()
    before = capture_cache().stats
    capture_cache().stats = cc.CaptureStats()
    yield
    capture_cache().clear()
    capture_cache().stats = before


def _llama():
    pytest.importorskip("transformers")
    return tiny_llama()


def _ids(n: int = 2) -> list[dict]:
    return llama_ids(n)


def _sample(batch: dict) -> Inputs:
    return Inputs((), dict(batch))


def _out(graph, sample: Inputs) -> torch.Tensor:
    with torch.no_grad():
        out = graph.output(graph.gm(*graph.flat(sample)))
    return out.logits if hasattr(out, "logits") else out


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model: nn.Module, state: dict) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ---- in the process ------------------------------------------------------------------------
def test_one_capture_per_model_and_independent_copies():
    net = tiny_net()
    state = _state(net)
    x = tiny_data(1)[0][0]
    g1, g2 = capture(net), capture(net)
    stats = capture_cache().stats
    assert (stats.built, stats.memory) == (1, 1)
    assert g1 is not g2 and g1.gm is not g2.gm and _out(g1, Inputs((x,))).equal(_out(g2, Inputs((x,))))
    with torch.no_grad():  # a fix changes its copy's weights: no other copy, not the kept one
        g1.module(g1.layers[0]).weight.mul_(0.0)
    g3 = capture(net)
    assert not g1.module(g1.layers[0]).weight.equal(g3.module(g3.layers[0]).weight)
    assert g2.module(g2.layers[0]).weight.equal(g3.module(g3.layers[0]).weight)
    assert _same_state(net, state)


def _tensors(graph) -> dict:
    return {**dict(graph.gm.named_parameters(remove_duplicate=False)), **dict(graph.gm.named_buffers(remove_duplicate=False))}


@pytest.mark.parametrize("method", ["fx", "export"])
def test_shared_copies_cost_no_weight_memory_and_give_the_same_outputs(method):
    net = tiny_net()
    state = _state(net)
    x = Inputs((tiny_data(1)[0][0],))
    deep = capture(net, x, method)  # a deep copy of the kept capture: the oracle
    s1, s2 = capture(net, x, method, share_weights=True), capture(net, x, method, share_weights=True)
    kept = capture_cache().kept[next(reversed(capture_cache().kept))]
    assert (capture_cache().stats.built, capture_cache().stats.memory) == (1, 2)
    for g in (s1, s2):
        assert g.gm is not kept.gm and _out(g, x).equal(_out(deep, x))
        mine, theirs = _tensors(g), _tensors(kept)
        assert mine.keys() == theirs.keys() and len(mine) > 0
        for k, t in mine.items():  # the same storage, another tensor object
            assert t.data_ptr() == theirs[k].data_ptr() and t is not theirs[k]
        assert all(t.data_ptr() != theirs[k].data_ptr() for k, t in _tensors(deep).items() if t.numel())
    # replacing a weight of a shared copy (not in place) leaves the kept capture and the other copy
    m = s1.module(s1.layers[0])
    m.weight = nn.Parameter(torch.zeros_like(m.weight), requires_grad=False)
    assert cc.still_shared(kept, capture_cache().versions[next(reversed(capture_cache().kept))])
    assert _out(s2, x).equal(_out(deep, x)) and _out(capture(net, x, method), x).equal(_out(deep, x))
    assert capture_cache().stats.built == 1 and _same_state(net, state)


def test_an_in_place_change_of_a_shared_weight_is_seen_and_the_model_captured_anew():
    net = tiny_net()
    state = _state(net)
    x = Inputs((tiny_data(1)[0][0],))
    want = _out(capture(net), x)
    key = next(reversed(capture_cache().kept))
    kept, versions = capture_cache().kept[key], capture_cache().versions[key]
    shared = capture(net, share_weights=True)
    assert cc.still_shared(kept, versions)
    with torch.no_grad():  # a caller that breaks the promise: changes the kept weights too
        shared.module(shared.layers[0]).weight.mul_(0.5)
    assert not cc.still_shared(kept, versions)
    again = capture(net)
    stats = capture_cache().stats
    assert (stats.built, stats.stale) == (2, 1)  # not the changed one: a fresh capture
    assert _out(again, x).equal(want) and _same_state(net, state)
    assert cc.still_shared(capture_cache().kept[key], capture_cache().versions[key])


def test_an_export_capture_is_on_the_model_s_own_weights_and_leaves_them_unchanged():
    model = _llama()
    state = _state(model)
    x = _sample(_ids(1)[0])
    shared = capture(model, x, "export", share_weights=True)
    mine = {p.data_ptr() for p in model.parameters()}
    theirs = [t.data_ptr() for t in _tensors(shared).values()]
    assert sum(ptr in mine for ptr in theirs) >= len(shared.layers) - 1  # every layer but a tied (cloned) one
    deep = capture(model, x, "export")
    assert all(t.data_ptr() not in mine for t in _tensors(deep).values() if t.numel())
    assert _out(shared, x).equal(_out(deep, x)) and _same_state(model, state)
    with torch.no_grad():  # the user changes the model in place: another key, and the kept capture is stale
        model.model.layers[0].mlp.down_proj.weight.mul_(2)
    changed = capture(model, x, "export")
    assert capture_cache().stats.built == 2 and not _out(changed, x).equal(_out(deep, x))


def test_a_sweep_shares_the_kept_weights_and_leaves_them_unchanged():
    model, data = tiny_lm(), token_data()
    kw = dict(w_bits=(3, 6), metric="perplexity", granularity="per-group-8")
    first = ql.analyze(model, data, **kw)
    key = next(reversed(capture_cache().kept))
    assert cc.still_shared(capture_cache().kept[key], capture_cache().versions[key])
    second = ql.analyze(model, data, **kw)
    stats = capture_cache().stats
    assert (stats.built, stats.memory, stats.stale) == (1, 1, 0)
    capture_cache().clear()
    fresh = ql.analyze(model, data, **kw)  # the oracle: a fresh capture, nothing shared before
    cells = lambda r: [(c.layer, c.w_bits, c.metric, c.noise, c.mean_shift) for c in r.cells]  # noqa: E731
    assert cells(first) == cells(second) == cells(fresh)


def test_another_model_weights_structure_or_sample_is_another_capture():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    b = copy.deepcopy(a)
    b[1] = nn.GELU()  # same weights, same class names at the top: only the structure differs
    c = copy.deepcopy(a)
    with torch.no_grad():
        c[0].bias[0] += 1e-3
    ga, gb, gc = capture(a), capture(b), capture(c)
    assert [l.act for l in ga.layers] == ["ReLU"] and [l.act for l in gb.layers] == ["GELU"]
    assert capture_cache().stats.built == 3
    assert structure_hash(a) != structure_hash(b)
    assert gc.module(gc.layers[0]).bias[0] != ga.module(ga.layers[0]).bias[0]
    x1, x2 = Inputs((torch.ones(2, 4),)), Inputs((torch.ones(3, 4),))
    assert sample_signature(x1) != sample_signature(x2) and sample_signature(x1) == sample_signature(Inputs((torch.zeros(2, 4),)))
    capture(a, x1, "export"), capture(a, x2, "export"), capture(a, Inputs((torch.zeros(2, 4),)), "export")
    assert capture_cache().stats.built == 5  # values are not part of the key, shapes are


def test_a_failed_capture_is_kept_and_raised_again():
    m = Untraceable()
    with pytest.raises(CaptureError) as first:
        capture(m)
    with pytest.raises(CaptureError) as second:
        capture(m)
    assert first.value is second.value and capture_cache().stats.built == 0 and capture_cache().stats.memory == 1


def test_memory_keeps_the_last_entries():
    cache = CaptureCache(entries=1)
    nets = [tiny_net(0), tiny_net(1)]
    built = lambda m: (lambda: (fx_capture(m), None))  # noqa: E731
    for m in (nets[0], nets[1], nets[0]):
        cache.get(m, None, "fx", built(m))
    assert cache.stats.built == 3 and len(cache.kept) == 1


@pytest.mark.slow
def test_a_sweep_with_the_cache_gives_the_cells_of_a_fresh_capture():
    model, data = _llama(), _ids()
    state = _state(model)
    fresh = ql.analyze(model, data, w_bits=[4, 8], metric="kl")
    assert capture_cache().stats.built == 1
    cached = ql.analyze(model, data, w_bits=[4, 8], metric="kl")
    assert capture_cache().stats.built == 1 and capture_cache().stats.memory == 1
    assert [(c.layer, c.w_bits, c.noise, c.metric) for c in fresh.cells] == \
        [(c.layer, c.w_bits, c.noise, c.metric) for c in cached.cells]
    assert _same_state(model, state)


# ---- the export program ------------------------------------------------------------------
class _InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        y.relu_()
        return y * 2


def test_an_in_place_op_is_functionalized_and_its_activation_fused():
    torch.manual_seed(0)
    m, x = _InPlace().eval(), torch.randn(3, 4)
    ep = export_program(m, Inputs((x,)))  # functionalized: no in-place op left
    assert not any(getattr(n.target, "_schema", None) is not None and n.target._schema.is_mutable for n in ep.graph.nodes)
    g = capture(m, Inputs((x,)), "export")
    assert [l.act for l in g.layers] == ["ReLU"] and _out(g, Inputs((x,))).equal(m(x))


# ---- on disk ---------------------------------------------------------------------------------
_CHILD = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, {tests!r})
    from support.lm_models import llama_ids, tiny_llama
    from quantlens.core.inputs import Inputs
    from quantlens.graph.capture import capture
    from quantlens.graph.capture_cache import capture_cache, use_capture_cache
    model, sample = tiny_llama(), Inputs((), llama_ids(1)[0])
    with use_capture_cache({dir!r}):
        g = capture(model, sample)
    with torch.no_grad():
        out = g.output(g.gm(*g.flat(sample))).logits
    s = capture_cache().stats
    torch.save({{"out": out, "built": s.built, "disk": s.disk}}, {out!r})
""")


def test_a_second_process_reads_the_disk_cache(tmp_path):
    model, sample = _llama(), _sample(_ids(1)[0])
    state = _state(model)
    with use_capture_cache(tmp_path / "cc"):
        fresh = capture(model, sample)
    assert capture_cache().stats.saved == 1 and len(list((tmp_path / "cc").glob("*.pt2"))) == 1
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(tests=str(Path(__file__).resolve().parents[1]), dir=str(tmp_path / "cc"),
                                    out=str(tmp_path / "out.pt")))
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run([sys.executable, str(script)], check=True, env=env, capture_output=True)
    child = torch.load(tmp_path / "out.pt")
    assert (child["built"], child["disk"]) == (0, 1)
    assert child["out"].equal(_out(fresh, sample))
    assert _same_state(model, state)


def _entry(directory: Path) -> tuple[Path, dict]:
    (meta,) = [p for p in directory.glob("*.json") if p.name != cc.MARKER]
    return meta, json.loads(meta.read_text())


def test_an_entry_of_another_quantlens_version_is_replaced(tmp_path, monkeypatch):
    model, sample = _llama(), _sample(_ids(1)[0])
    with use_capture_cache(tmp_path):
        fresh = capture(model, sample)
    old, _ = _entry(tmp_path)
    monkeypatch.setattr(cc, "__version__", "99.0")
    capture_cache().clear()
    with use_capture_cache(tmp_path), pytest.warns(QuantlensWarning, match=r"holds this model's capture made with "
                                                   r"quantlens version 0\.\d+\.\d+ \(this is 99\.0\): ignoring it"):
        again = capture(model, sample)
    new, header = _entry(tmp_path)  # the old entry is gone, the new one is this version's
    assert new != old and header["version"] == "99.0" and not old.with_suffix(".pt2").exists()
    assert capture_cache().stats.built == 2 and _out(again, sample).equal(_out(fresh, sample))


def test_an_entry_of_another_model_is_not_used(tmp_path):
    model, sample = _llama(), _sample(_ids(1)[0])
    with use_capture_cache(tmp_path):
        capture(model, sample)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight[0, 0] += 1.0
    capture_cache().clear()
    with use_capture_cache(tmp_path), pytest.warns(QuantlensWarning, match=r"holds no capture of this model \(the "
                                                   r"nearest of its 1 entries has another model weights\)"):
        g = capture(other, sample)
    assert capture_cache().stats.disk == 0 and len(list(tmp_path.glob("*.pt2"))) == 2
    with torch.no_grad():
        assert _out(g, sample).equal(other(**_ids(1)[0]).logits)


def test_an_unreadable_or_edited_entry_is_rebuilt(tmp_path):
    model, sample = _llama(), _sample(_ids(1)[0])
    with use_capture_cache(tmp_path):
        fresh = capture(model, sample)
    meta, header = _entry(tmp_path)
    meta.with_suffix(".pt2").write_bytes(b"not a program")
    capture_cache().clear()
    with use_capture_cache(tmp_path), pytest.warns(QuantlensWarning, match="is unreadable .*capturing the model anew"):
        g = capture(model, sample)
    assert _out(g, sample).equal(_out(fresh, sample))
    meta.write_text(json.dumps({**header, "model": "0" * 32}))  # a header that is not its name's
    capture_cache().clear()
    with use_capture_cache(tmp_path), pytest.warns(QuantlensWarning, match="header does not match its name"):
        capture(model, sample)
    capture_cache().clear()
    with use_capture_cache(tmp_path):  # rebuilt and saved again: read back now
        capture(model, sample)
    assert capture_cache().stats.disk == 1


def test_bad_cache_directories_are_one_line(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(QuantlensError, match="--capture-cache .*file: exists and is not a directory"):
        CaptureCache(f)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(QuantlensError, match="a non-empty directory that is not a quantlens capture cache"):
        with use_capture_cache(tmp_path / "other"):
            pass
    assert capture_cache().directory is None
