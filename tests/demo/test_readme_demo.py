"""README.md's demo output is what ``quantlens demo`` prints from the shipped weights, the
demo's table fits a 100-column terminal, and docs/llm.md's figures are the shipped LM's (slow).

The demos load the shipped weights and text (no training in the test run), so these are exact
comparisons: if the weights or the CLI's table change, re-run ``COLUMNS=100 quantlens demo
--out quantlens-demo`` (and ``--lm``) and paste its output into the README block after
``make demo`` (and docs/llm.md's).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from quantlens.cli import build_parser, common, main
from quantlens.cli import demo as cli_demo
from quantlens.cli.common import summary_table
from quantlens.sweep.results import SweepResult

README = Path(__file__).resolve().parents[2] / "README.md"
WROTE = re.compile(r"wrote quantlens-demo/results\.json, results\.csv and report\.html; demo took \d+\.\d s")


def readme_block() -> list[str]:
    """The lines of the code block after "`make demo` writes" in README.md."""
    text = README.read_text()
    start = text.index("```\n", text.index("`make demo` writes")) + 4
    return text[start : text.index("```", start)].rstrip("\n").splitlines()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """``quantlens demo --out quantlens-demo`` as a 100-column terminal shows it, and its results."""
    rec = Console(width=100, record=True, file=io.StringIO(), highlight=False)
    build_parser()  # every command module imported now, so none binds the recording console below
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("demo"))
        mp.setattr(common, "console", rec)
        mp.setattr(cli_demo, "console", rec)
        assert main(["demo", "--out", "quantlens-demo", "--no-progress"]) == 0
        result = SweepResult.from_json(Path("quantlens-demo/results.json"))
    return [line.rstrip() for line in rec.export_text().splitlines()], result


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _expected(result: SweepResult, header: str, rank: int, bits: int = 4) -> str:
    c = result.worst(bits, 5)[rank - 1]
    info = {l.name: l for l in result.layers}[c.layer]
    pct = lambda x: f"{100 * x:+.2f}%"  # noqa: E731
    if header == "#":
        return str(rank)
    if header == "layer":
        return c.layer
    if header == "op":
        return info.op
    if header == "params":
        return f"{info.params:,}"
    if m := re.fullmatch(r"deg@(\d)b", header):
        return pct(result.cell(c.layer, int(m.group(1))).degradation)
    if header == f"95% CI@{bits}b":
        return f"[{pct(c.ci_low)}, {pct(c.ci_high)}]"
    if header == f"SQNR@{bits}b":
        return f"{c.sqnr_db:.1f} dB"
    if header == f"share@{bits}b":
        return f"{100 * result.share(bits)[c.layer]:.0f}%"
    raise AssertionError(f"README table: unexpected column {header!r}")


def test_readme_rows_are_the_shipped_demo_numbers(demo_run):
    """Every number in the README's demo table, read back and compared with the sweep's results."""
    _, result = demo_run
    block = readme_block()
    assert f"float top1 = {100 * result.baseline:.2f}%" in block[1] and f"{result.num_samples} samples" in block[1]
    head = next(i for i, line in enumerate(block) if line.lstrip().startswith("#  layer"))
    headers = _cells(block[head])
    assert block[head + 1].strip(" ─") == ""  # the rule under the header
    rows = [_cells(line) for line in block[head + 2 :] if re.match(r"\s*\d+\s{2,}\S", line)]
    assert len(rows) == len(result.worst(4, 5)) == len(result.layers)
    for rank, row in enumerate(rows, 1):
        want = {h: _expected(result, h, rank) for h in headers}
        assert dict(zip(headers, row)) == want, f"README row {rank} is not the shipped demo's"


def test_readme_block_is_what_the_demo_prints(demo_run):
    printed, _ = demo_run
    block = readme_block()
    assert block[:-1] == printed[:-1], "README.md's demo block differs from `COLUMNS=100 quantlens demo` (see module doc)"
    assert WROTE.fullmatch(block[-1]) and WROTE.fullmatch(printed[-1])


def _table_lines(result: SweepResult, width: int) -> list[str]:
    con = Console(width=width, record=True, file=io.StringIO(), highlight=False)
    con.print(summary_table(result, 5, 4, width=width))
    return con.export_text().splitlines()


@pytest.mark.parametrize("width", [100, 140, 160])
def test_demo_table_fits_without_wrapping(demo_run, width):
    """At 100 columns nothing is cut or wrapped (columns are left out and named); wider shows more."""
    _, result = demo_run
    lines = _table_lines(result, width)
    assert max(map(len, lines)) <= width
    worst = result.worst(4, 5)
    title, header, rule, *rows = lines
    assert "worst layers at 4-bit weights" in title and header.lstrip().startswith("#  layer") and set(rule.strip()) == {"─"}
    for rank, c in enumerate(worst, 1):  # one line per row, starting with its rank and layer, ending with its last cell
        line = rows[rank - 1]
        last = _cells(header)[-1]
        assert re.match(rf"\s*{rank}\s+{re.escape(c.layer)}\s", line), line
        assert line.rstrip().endswith(_expected(result, last, rank)), line
    caption = rows[len(worst) :]
    shown = _cells(header)
    full = ["#", "layer", "op", "params", *(f"deg@{b}b" for b in result.w_bits), "95% CI@4b", "vs float@4b", "SQNR@4b", "share@4b"]
    if width >= 140:
        assert shown == full and caption == []
    else:
        assert shown == [h for h in full if h not in ("op", "params", "vs float@4b")]
        assert [line.strip() for line in caption] == ["not shown at 100 columns: op, params, vs float@4b"]


@pytest.mark.slow
def test_llm_doc_figures_are_the_shipped_lm():
    """docs/llm.md's printed demo (worst layers and roles at 3 bits) from the shipped LM weights."""
    pytest.importorskip("transformers")
    from quantlens.demo import lm
    from quantlens.report.fmt import Units
    from quantlens.report.roles import worst_roles
    from quantlens.sweep.api import analyze, make_config

    result = analyze(lm.model(), lm.data(), config=make_config((3,), None, "per-group-32"), metric="perplexity",
                     output_key="logits", progress=False)
    doc = (README.parent / "docs" / "llm.md").read_text()
    block = doc[doc.index("```\nloading the shipped byte-level Llama") :].split("```")[1].splitlines()
    u = Units.for_metric("perplexity")
    assert f"float perplexity = {result.baseline:.6g}" in "\n".join(block)
    layers = [_cells(line) for line in block if re.match(r" \d  (lm_head|model\.)", line)]
    assert [(row[1], row[2]) for row in layers] == [(c.layer, f"{c.degradation:+.4g}") for c in result.worst(3, 5)]
    start = [line.strip() for line in block].index("worst roles at 3-bit weights")
    roles = [_cells(line) for line in block[start + 3 : start + 8]]
    assert [(row[1], row[2]) for row in roles] == [(role, u.deg(d, signed=True)) for role, d in worst_roles(result, 3, 5)]
