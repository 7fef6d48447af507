"""The JSON files quantlens writes: NaN as null, atomic writes, one-line errors on bad files."""

from __future__ import annotations

import math

import pytest

from quantlens.core import jsonio
from quantlens.experiments.additivity import AdditivityResult
from quantlens.experiments.fixloop import FixResult
from quantlens.errors import QuantlensError
from quantlens.experiments.plan import PlanResult


def test_nan_roundtrip_and_atomic_write(tmp_path):
    p = tmp_path / "x.json"
    jsonio.dump({"schema": "t/v1", "a": float("nan"), "b": (1.5, float("-inf"))}, p)
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary file left
    d = jsonio.load(p, "t/v1", "test file")
    assert d["a"] is None and d["b"] == [1.5, None]
    assert math.isnan(jsonio.num(d["a"])) and jsonio.num(d["b"][0]) == 1.5
    assert jsonio.load(tmp_path, "t/v1", "test file", "x.json") == d  # a directory holding it


@pytest.mark.parametrize("cls,name", [(FixResult, "fix.json"), (AdditivityResult, "additivity.json"), (PlanResult, "plan.json")])
def test_result_files_fail_with_one_line(tmp_path, cls, name):
    with pytest.raises(QuantlensError, match="does not exist"):
        cls.from_json(tmp_path / name)
    (tmp_path / name).write_text("{broken")
    with pytest.raises(QuantlensError, match="not valid JSON"):
        cls.from_json(tmp_path / name)
    (tmp_path / name).write_text('{"schema": "quantlens/sweep-v1"}')
    with pytest.raises(QuantlensError, match="not a quantlens"):
        cls.from_json(tmp_path)
