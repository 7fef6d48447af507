"""``--capture-cache DIR`` on the commands that capture: a directory that cannot be one is one line."""

from __future__ import annotations

import pytest

from quantlens.cli import main
from quantlens.graph.capture_cache import capture_cache


@pytest.mark.parametrize("cmd", [["analyze", "--data", "x:y"], ["fix", "--data", "x:y"], ["plan", "--data", "x:y"],
                                 ["additivity", "--data", "x:y"], ["export", "--config", "c"]])
def test_a_capture_cache_that_is_a_file_is_one_line(cmd, tmp_path, capsys):
    f = tmp_path / "cc"
    f.write_text("x")
    rc = main([cmd[0], "--model", "x:y", *cmd[1:], "--out", str(tmp_path / "out"), "--capture-cache", str(f)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == f"quantlens: error: --capture-cache {f}: exists and is not a directory; choose another path"
    assert capture_cache().directory is None  # the setting ends with the command
