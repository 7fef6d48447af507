"""The demo's report in a real browser (headless Chromium through chromedriver).

Checks: no console error, no network request besides the file itself, every plot drawn, the
table sorts, a page screenshot that is not blank, and a hostile layer name that runs nothing.
Without Chromium the test skips locally and FAILS in CI (``CI`` set), with what to install.
Set ``QUANTLENS_DOCS_PNG=docs/report.png`` to also save the screenshot there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from support.report_helpers import (
    EVIL,
    llm_estimate_result,
    synthetic_result,
    write_run,
)

from quantlens.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(300)]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--window-size=1280,1000"]
HOW = "install Debian packages chromium and chromium-driver (apt-get install -y chromium chromium-driver) and pip install selenium"


def _find() -> tuple[str, str]:
    browser = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
    try:
        import selenium  # noqa: F401
    except ImportError:
        browser = None
    if not browser or not driver:
        msg = f"headless Chromium not available (browser={browser}, chromedriver={driver}): {HOW}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return browser, driver


@pytest.fixture()
def chrome(tmp_path):
    browser, driver_path = _find()
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for f in FLAGS + [f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(driver_path))
    drv.set_page_load_timeout(120)
    yield drv
    drv.quit()


def _open(drv, page: Path) -> tuple[list[dict], list[str]]:
    """Load ``page``; return its console entries and the URLs it requested."""
    drv.get("about:blank")
    drv.get_log("browser"), drv.get_log("performance")  # drop the start page's entries
    drv.get(page.resolve().as_uri())
    for _ in range(100):  # every plot drawn (plotly adds .main-svg), or give up after ~10 s
        if drv.execute_script("return [...document.querySelectorAll('.plot')].every(d => d.querySelector('.main-svg'))"):
            break
        time.sleep(0.1)
    time.sleep(0.5)
    console = drv.get_log("browser")
    msgs = [json.loads(e["message"])["message"] for e in drv.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in msgs if m["method"] == "Network.requestWillBeSent"]
    return console, urls


def _assert_offline(console: list[dict], urls: list[str], page: Path) -> None:
    errors = [e for e in console if e.get("level") in ("SEVERE", "ERROR")]
    assert not errors, f"console errors: {errors}"
    foreign = [u for u in urls if u != page.resolve().as_uri() and not u.startswith(("data:", "blob:", "about:"))]
    assert not foreign, f"network requests: {foreign}"
    assert page.resolve().as_uri() in urls


def _screenshot(drv, path: Path) -> "object":
    from PIL import Image

    h = drv.execute_script("return document.documentElement.scrollHeight")
    drv.set_window_size(1280, min(int(h), 6000) + 140)
    time.sleep(1.0)
    drv.save_screenshot(str(path))
    return Image.open(path).convert("RGB")


def test_demo_report_in_chromium(chrome, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    page = out / "report.html"
    console, urls = _open(chrome, page)
    _assert_offline(console, urls, page)
    n_plots = chrome.execute_script("return document.querySelectorAll('.plot').length")
    drawn = chrome.execute_script("return document.querySelectorAll('.plot .main-svg').length")
    assert n_plots == 5 and drawn >= n_plots
    assert chrome.execute_script("return document.querySelectorAll('#plot-heatmap .hm, #plot-heatmap image').length") > 0
    # sort the layer table by the 3-bit degradation, descending: the worst layer comes first
    order = chrome.execute_script("""
        const t = document.getElementById('layers-table'); const th = [...t.tHead.rows[0].cells].find(c => c.textContent === 'deg@3b');
        th.click(); th.click();
        return [...t.tBodies[0].rows].map(r => r.cells[1].textContent);""")
    from quantlens.sweep.results import SweepResult

    r = SweepResult.from_json(out / "results.json")
    assert order[0] == r.worst(3, 1)[0].layer
    img = _screenshot(chrome, tmp_path / "report.png")
    from PIL import ImageStat

    assert img.size[0] >= 1200 and img.size[1] >= 2000
    assert max(ImageStat.Stat(img).stddev) > 20  # not blank
    colours = len(img.resize((320, 400)).getcolors(1 << 20) or [])
    assert colours > 200, f"only {colours} colours: the page looks blank"
    docs = os.environ.get("QUANTLENS_DOCS_PNG")
    if docs:
        img.save(docs, optimize=True)
    assert not [e for e in chrome.get_log("browser") if e.get("level") == "SEVERE"]  # nor after sorting


def test_hostile_layer_name_runs_nothing(chrome, tmp_path):
    write_run(synthetic_result([EVIL, "dw", "wide", "fine"]), tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    page = tmp_path / "report.html"
    console, urls = _open(chrome, page)
    _assert_offline(console, urls, page)  # an <img src=x> would have requested .../x
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        _ = chrome.switch_to.alert.text
    assert chrome.execute_script("return document.images.length") == 0
    assert EVIL in chrome.execute_script("return document.body.innerText")
    ticks = chrome.execute_script("return [...document.querySelectorAll('#plot-heatmap .ytick text')].map(t => t.textContent)")
    assert EVIL in ticks


def test_offline_check_catches_a_request(chrome, tmp_path):
    """Negative control: a page that does request something is caught by the same check."""
    page = tmp_path / "leaky.html"
    page.write_text('<!DOCTYPE html><html><body><img src="x.png"><script>fetch("http://127.0.0.1:9/t")</script></body></html>')
    console, urls = _open(chrome, page)
    with pytest.raises(AssertionError):
        _assert_offline(console, urls, page)
    assert any(u.endswith("/x.png") for u in urls)


def test_llm_report_filters_and_sorts_in_chromium(chrome, tmp_path):
    """The LLM page (211 layers, --estimate): every plot drawn offline, the role x block view first,
    the layer table filtered by text, role and block and sorted by the estimate."""
    write_run(llm_estimate_result(30), tmp_path)
    assert main(["report", str(tmp_path)]) == 0
    page = tmp_path / "report.html"
    from selenium.webdriver.support.ui import Select

    drv = chrome
    console, urls = _open(drv, page)
    _assert_offline(console, urls, page)
    first = drv.execute_script("return [...document.querySelectorAll('section')].map(s => s.id).slice(0, 3)")
    assert first == ["summary", "roles", "layers"]
    assert drv.execute_script("return document.querySelectorAll('#plot-roles .main-svg').length") > 0
    visible = "return [...document.getElementById('layers-table').tBodies[0].rows].filter(r => !r.hidden)"
    count = "return document.querySelector('div.filter .count').textContent"
    assert drv.execute_script(count) == "211 of 211 layers"
    box = drv.find_element("css selector", "div.filter input")
    box.send_keys("down_proj")
    names = drv.execute_script(visible + ".map(r => r.cells[3].textContent)")
    assert names == [f"model.layers.{b}.mlp.down_proj" for b in range(30)] and drv.execute_script(count) == "30 of 211 layers"
    Select(drv.find_element("css selector", "select[data-col='1']")).select_by_value("7")
    assert drv.execute_script(visible + ".map(r => r.cells[3].textContent)") == ["model.layers.7.mlp.down_proj"]
    box.clear()
    box.send_keys(" ")  # an empty filter: block 7 only
    assert len(drv.execute_script(visible)) == 7
    Select(drv.find_element("css selector", "select[data-col='1']")).select_by_value("")
    Select(drv.find_element("css selector", "select[data-col='2']")).select_by_value("self_attn.q_proj")
    assert len(drv.execute_script(visible)) == 30
    # sort by the nvfp4 estimate, descending: the largest estimate of the role first, hidden rows stay hidden
    order = drv.execute_script("""
        const t = document.getElementById('layers-table'); const th = [...t.tHead.rows[0].cells].find(c => c.textContent === 'est@nvfp4');
        th.click(); th.click();
        return [...t.tBodies[0].rows].filter(r => !r.hidden).map(r => r.cells[3].textContent);""")
    assert order == [f"model.layers.{b}.self_attn.q_proj" for b in reversed(range(30))]
    assert not [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
