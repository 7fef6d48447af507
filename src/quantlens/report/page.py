"""The HTML shell: one self-contained page with plotly.js inlined once, CSS, a sortable table.

Nothing on the page reaches the network: plotly.js and all data are inline, and a
Content-Security-Policy (``default-src 'none'``) forbids any request the page could still try.

Example:
    >>> html = Page("quantlens report").add("summary", "Summary", "<p>hi</p>").render()   # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import plotly.graph_objects as go

from quantlens import __version__
from quantlens.report.safe import esc, script_json

__all__ = ["Td", "Page", "plot_div", "table", "filter_bar", "plotly_js"]

CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
       "font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'")
PLOT_CONFIG = {"responsive": True, "displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}

CSS = """
*{box-sizing:border-box}body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
color:#1f2937;background:#f5f6f8}header{background:#1f2937;color:#fff;padding:18px 32px}header h1{margin:0;font-size:22px}
header .sub{color:#cbd5e1;font-size:13px}nav{position:sticky;top:0;z-index:10;background:#fff;border-bottom:1px solid #e5e7eb;
padding:8px 32px;font-size:13px}nav a{margin-right:16px;color:#2563eb;text-decoration:none}main{max-width:1240px;margin:0 auto;
padding:16px 24px 40px}section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:16px 20px;margin:16px 0}
h2{margin:0 0 8px;font-size:18px}p.lead{color:#4b5563;margin:0 0 10px}.facts{display:grid;grid-template-columns:
repeat(auto-fill,minmax(190px,1fr));gap:8px;margin:8px 0 14px}.fact{background:#f9fafb;border:1px solid #eef0f3;border-radius:6px;
padding:6px 10px}.fact b{display:block;font-size:11px;text-transform:uppercase;color:#6b7280;letter-spacing:.04em}
.fact span{font-size:15px;word-break:break-word}ul.next{margin:6px 0 12px;padding-left:20px}ul.next li{margin:4px 0}
li.share{font-weight:600}table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}th,td{padding:4px 8px;
border-bottom:1px solid #eef0f3;text-align:right;white-space:nowrap}th{background:#f3f4f6}
td.t,th.t{text-align:left}table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
.scroll{overflow-x:auto}.note{color:#92400e;background:#fffbeb;border:1px solid #fde68a;border-radius:6px;padding:6px 10px}
.plot{width:100%}footer{color:#6b7280;font-size:12px;text-align:center;padding:12px}td.bad{color:#b91c1c}td.good{color:#15803d}
div.filter{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin:6px 0}div.filter input{flex:1;min-width:220px;padding:4px 8px;
border:1px solid #d1d5db;border-radius:4px}div.filter select{padding:3px 6px;border:1px solid #d1d5db;border-radius:4px}
div.filter .count{color:#6b7280;font-size:12px}.scroll.tall{max-height:640px;overflow-y:auto}.scroll.tall thead th{position:sticky;top:0}
td.est{color:#6b7280;font-style:italic}
"""

SORT_JS = """
(function(){function key(td){var v=td.getAttribute('data-v');if(v===null||v===''){return null;}var n=Number(v);
return isNaN(n)?v.toLowerCase():n;}
document.querySelectorAll('table.sortable').forEach(function(t){t.querySelectorAll('thead th').forEach(function(th,i){
th.title='click to sort';th.addEventListener('click',function(){var asc=th.getAttribute('aria-sort')!=='ascending';
t.querySelectorAll('thead th').forEach(function(h){h.removeAttribute('aria-sort');});
th.setAttribute('aria-sort',asc?'ascending':'descending');var body=t.tBodies[0];
var rows=Array.prototype.slice.call(body.rows);rows.sort(function(a,b){var x=key(a.cells[i]),y=key(b.cells[i]);
if(x===null&&y===null){return 0;}if(x===null){return 1;}if(y===null){return -1;}
if(typeof x!==typeof y){x=String(x);y=String(y);}var c=x<y?-1:(x>y?1:0);return asc?c:-c;});
rows.forEach(function(r){body.appendChild(r);});});});});})();
"""

FILTER_JS = """
(function(){document.querySelectorAll('div.filter').forEach(function(f){var t=document.getElementById(f.getAttribute('data-for'));
if(!t){return;}var box=f.querySelector('input'),sels=Array.prototype.slice.call(f.querySelectorAll('select')),
count=f.querySelector('.count'),rows=Array.prototype.slice.call(t.tBodies[0].rows),what=f.getAttribute('data-what')||'rows';
function apply(){var terms=box.value.toLowerCase().split(/\\s+/).filter(function(x){return x;}),shown=0;
rows.forEach(function(r){var text=r.textContent.toLowerCase();var ok=terms.every(function(x){return text.indexOf(x)>=0;})&&
sels.every(function(s){return !s.value||r.cells[Number(s.getAttribute('data-col'))].textContent===s.value;});
r.hidden=!ok;if(ok){shown++;}});count.textContent=shown+' of '+rows.length+' '+what;}
box.addEventListener('input',apply);sels.forEach(function(s){s.addEventListener('change',apply);});apply();});})();
"""


@dataclass(frozen=True)
class Td:
    """A table cell: shown ``text`` (escaped on render), ``sort`` key, optional CSS class."""

    text: str
    sort: Union[float, str, None] = None
    cls: str = ""


def _td(c: Union[Td, str, int, float]) -> str:
    if not isinstance(c, Td):
        c = Td(str(c), c if isinstance(c, (int, float)) else str(c), "" if isinstance(c, (int, float)) else "t")
    sort = "" if c.sort is None or (isinstance(c.sort, float) and c.sort != c.sort) else esc(c.sort)
    cls = f' class="{esc(c.cls)}"' if c.cls else ""
    return f'<td{cls} data-v="{sort}">{esc(c.text)}</td>'


def table(headers: Sequence[str], rows: Sequence[Sequence[Union[Td, str, int, float]]], sortable: bool = True,
          text_cols: Sequence[int] = (), table_id: Optional[str] = None, tall: bool = False) -> str:
    """An HTML table; every header and cell is escaped. ``text_cols`` are left-aligned; ``tall``:
    the table scrolls inside a box of limited height, its header row stays in view."""
    ths = "".join(f'<th{" class=t" if i in text_cols else ""}>{esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
    tid = f' id="{esc(table_id)}"' if table_id else ""
    return (f'<div class="scroll{" tall" if tall else ""}"><table{tid}{" class=sortable" if sortable else ""}><thead><tr>{ths}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def filter_bar(table_id: str, selects: Sequence[tuple[int, str, Sequence[str]]] = (), what: str = "rows",
               placeholder: str = "filter: words that must all appear in a row") -> str:
    """Controls that hide the rows of table ``table_id`` (no reload, no request): a text box (every
    word must appear in the row) and one ``<select>`` per ``(column, label, values)`` (the row's
    cell in that column must equal the chosen value); ``N of M {what}`` counts the rows shown."""
    parts = [f'<input type="search" placeholder="{esc(placeholder)}" aria-label="{esc(placeholder)}">']
    for col, label, values in selects:
        opts = f'<option value="">{esc(label)}: all</option>' + "".join(f'<option value="{esc(v)}">{esc(v)}</option>' for v in values)
        parts.append(f'<select data-col="{int(col)}" aria-label="{esc(label)}">{opts}</select>')
    return (f'<div class="filter" data-for="{esc(table_id)}" data-what="{esc(what)}">' + "".join(parts)
            + '<span class="count"></span></div>')


def plot_div(fig: go.Figure, div_id: str) -> str:
    """A ``<div>`` and the script that draws ``fig`` into it with the inlined plotly.js."""
    spec = json.loads(fig.to_json())
    return (f'<div id="{esc(div_id)}" class="plot"></div><script>Plotly.newPlot({script_json(div_id)}, '
            f"{script_json(spec.get('data', []))}, {script_json(spec.get('layout', {}))}, {script_json(PLOT_CONFIG)});</script>")


def plotly_js() -> str:
    """The plotly.js bundle shipped with the plotly package (about 4.8 MB)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


@dataclass
class Page:
    """Sections in order, rendered into one HTML document."""

    title: str
    subtitle: str = ""
    sections: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, anchor: str, heading: str, body: str) -> "Page":
        self.sections.append((anchor, heading, body))
        return self

    def render(self) -> str:
        nav = "".join(f'<a href="#{esc(a)}">{esc(h)}</a>' for a, h, _ in self.sections)
        secs = "".join(f'<section id="{esc(a)}"><h2>{esc(h)}</h2>{b}</section>' for a, h, b in self.sections)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(self.title)}</title><style>{CSS}</style>"
            f"<script>{plotly_js()}</script></head><body>"
            f"<header><h1>{esc(self.title)}</h1><div class=\"sub\">{esc(self.subtitle)}</div></header>"
            f"<nav>{nav}</nav><main>{secs}</main>"
            f"<footer>quantlens {esc(__version__)} · drawn from stored results only · Gluska &amp; Grobman, arXiv 2012.08420</footer>"
            f"<script>{SORT_JS}{FILTER_JS}</script></body></html>\n"
        )
