"""The CLI's worst-layers table fits the terminal: columns are left out, least needed first,
and named in the caption; rows never wrap while rank, layer and the ranked degradation fit."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from rich.console import Console
from support.report_helpers import with_intervals

from quantlens.cli.common import print_summary, summary_table

LONG = ["model.layers.0.self_attn.q_proj", "model.layers.11.mlp.down_proj", "model.layers.3.self_attn.o_proj", "lm_head"]


def _render(result, width: int) -> list[str]:
    con = Console(width=width, record=True, file=io.StringIO(), highlight=False)
    con.print(summary_table(result, 4, 4, width=width))
    return con.export_text().splitlines()


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_long_layer_names_fit_without_wrapping(width):
    result = with_intervals(LONG, n=200)
    lines = _render(result, width)
    assert max(map(len, lines)) <= width
    rows = [line for line in lines if re.match(r"\s*\d\s", line)]
    assert len(rows) == 4
    for rank, c in enumerate(result.worst(4, 4), 1):  # each row whole on one line
        assert re.match(rf"\s*{rank}\s+{re.escape(c.layer)}\s+", rows[rank - 1])
        assert f"{100 * c.degradation:+.2f}%" in rows[rank - 1]
    header = next(line for line in lines if line.lstrip().startswith("#"))
    if width == 160:
        assert "op" in header.split() and "share@4b" in header and not any("not shown" in line for line in lines)
    else:
        assert "op" not in header.split() and any(f"not shown at {width} columns: op, params" in line for line in lines)


def test_print_summary_goes_to_the_given_console():
    con = Console(width=160, record=True, file=io.StringIO(), highlight=False)
    print_summary(with_intervals(n=200), k=4, out=con)
    text = con.export_text()
    assert "worst layers at 4-bit weights" in text and "~ 0 (noise)" in text and "cannot be told" in text


@pytest.mark.parametrize("columns, width", [("100", 100), (None, 140)])
def test_piped_output_follows_columns(columns, width):
    """Printed to a pipe, the CLI's console is $COLUMNS wide if set (a script's terminal), else 140."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns:
        env["COLUMNS"] = columns
    p = subprocess.run([sys.executable, "-c", "from quantlens.cli.common import console; print(console.width)"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(width)
