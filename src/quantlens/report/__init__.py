"""Reports: the paper's figures for the user's own network, in one self-contained HTML page.

Figures are drawn from stored results only (``results.json`` and, when present,
``additivity.json``, ``fix.json``, ``plan.json``); nothing is recomputed. The page has no
network dependency: plotly.js is inlined and a Content-Security-Policy forbids requests.

Example:
    >>> from quantlens.report import write_report, write_compare      # doctest: +SKIP
    >>> write_report("quantlens-demo")                                 # doctest: +SKIP
    >>> write_compare(["run-a", "run-b"], "compare.html")              # doctest: +SKIP
"""

from quantlens.report.build import load_result, render_report, save_report, write_report
from quantlens.report.compare import render_compare, write_compare
from quantlens.report.extras import Extras, load_extras
from quantlens.report.insights import Insight, insights
from quantlens.report.options import ReportOptions

__all__ = ["render_report", "write_report", "save_report", "render_compare", "write_compare", "load_result", "load_extras", "Extras",
           "Insight", "insights", "ReportOptions"]
