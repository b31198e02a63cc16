"""report.html, opened in a real headless browser (Debian's Chromium through chromedriver):
the page loads with no console errors and no network, the charts are drawn, and a
screenshot is taken. `.ci/run` installs the browser and requires these tests to run."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import load_report

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
REQUIRED = os.environ.get("ONNX_GATE_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        message = (
            f"no browser here ({', '.join(missing)}): apt-get install chromium chromium-driver"
        )
        if REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tmp_path_factory.mktemp("chromium-profile")
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--window-size=1200,1600",
    ):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _open(browser, page: Path) -> list[dict]:
    browser.get_log("browser")  # what an earlier page logged is not this one's
    browser.get(page.resolve().as_uri())
    return [
        entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")
    ]


def _screenshot(browser, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    browser.save_screenshot(str(shot))
    keep = os.environ.get("ONNX_GATE_SCREENSHOTS")  # CI keeps them as artifacts
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / name)
    return shot


CHART_FIGURES = """
return [...document.querySelectorAll('.chart svg')].map(svg => {
  const box = svg.getBoundingClientRect();
  return {id: svg.parentElement.id, width: box.width, height: box.height,
          paths: svg.querySelectorAll('path, use').length, text: svg.textContent};
});
"""


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """One real run with a candidate that passes and one that destroys the model."""
    import numpy as np
    from click.testing import CliRunner

    from gate.cli import cli
    from tests.conftest import ModelCase, _write_case

    folder = tmp_path_factory.mktemp("html")
    rng = np.random.default_rng(2)
    w0 = rng.normal(scale=1 / np.sqrt(32), size=(32, 64))
    w0[:, 63] *= 3000.0  # static int8 of every op rounds the informative units to zero
    w1 = rng.normal(size=(64, 10))
    w1[63, :] = 0.0
    case: ModelCase = _write_case(
        folder, [(w0, rng.normal(scale=0.1, size=64)), (w1, np.zeros(10))], rng
    )
    policy = case.write_policy(
        {
            "data": {
                "validation": "validation.npz",
                "calibration": "calibration.npz",
                "labels": "labels.npy",
            },
            "candidates": [
                {"name": "int8-everything", "quantize": {"plugin": "static", "per_channel": False}},
                {"name": "dynamic", "quantize": {"plugin": "dynamic"}},
                {"name": "graph-basic", "graph": {"level": "basic"}},
            ],
            "search": {"fallback": False},
            "budgets": [
                {"metric": "accuracy_drop", "max": 0.02},
                {"metric": "speedup", "min": 1.0, "level": "warn"},
            ],
        }
    )
    out = folder / "out"
    result = CliRunner().invoke(cli, ["run", str(policy), "-o", str(out), "-q"])
    assert result.exit_code in (0, 1), result.output
    return out


def test_report_html_is_written_on_every_run_and_listed_in_the_report(gated):
    report = load_report(gated)
    assert "report.html" in report["files"]
    page = (gated / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in page  # no network, no script: a CI artifact opened offline
    assert "<script" not in page
    links = set(re.findall(r"https?://[^\"' <]+", page))
    assert all(link.startswith("http://www.w3.org/") for link in links), links  # namespaces only
    for candidate in report["candidates"]:
        assert candidate["name"] in page
    assert report["testbed"]["cpu"]["model"] in page


def test_report_html_loads_in_chromium_with_its_charts_drawn(gated, browser, tmp_path):
    report = load_report(gated)
    problems = _open(browser, gated / "report.html")
    assert problems == [], problems
    assert browser.title.startswith("onnx-gate")
    charts = {chart["id"]: chart for chart in browser.execute_script(CHART_FIGURES)}
    assert set(charts) == {"trade-off", "latency"}
    for chart in charts.values():
        assert chart["width"] > 300 and chart["height"] > 150, chart
        assert chart["paths"] > 10, chart  # axes, ticks, markers, curves: drawn, not empty
    trade_off = charts["trade-off"]["text"]
    assert "speedup over the original" in trade_off and "accuracy_drop" in trade_off
    assert "Pareto front" in trade_off and "budget: accuracy_drop" in trade_off
    if report["chosen"] not in (None, "original"):
        assert f"chosen: {report['chosen']}" in trade_off
    assert "original" in charts["latency"]["text"]
    shot = _screenshot(browser, tmp_path, "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_hostile_strings_in_a_report_stay_text_in_the_browser(gated, browser, tmp_path):
    """A model's output name or a plugin's message can hold markup: it is shown, never run."""
    from gate_plugins.html_report import render_model

    report = json.loads((gated / "report.json").read_text())
    hostile = (
        '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'
    )
    report["warnings"].append(hostile)
    report["candidates"][1]["outcome"] = hostile
    page = tmp_path / "hostile.html"
    page.write_text(render_model(report))
    problems = _open(browser, page)
    assert problems == [], problems
    assert browser.title != "owned"
    assert browser.execute_script("return document.querySelectorAll('img, script').length") == 0
    assert hostile in browser.execute_script("return document.body.innerText")


def test_without_matplotlib_the_page_still_has_its_tables_and_says_how_to_get_charts(
    gated, monkeypatch
):
    import gate_plugins.html_report as html_report

    monkeypatch.setattr(html_report, "_matplotlib", lambda: None)  # fault injection: no extra
    page = html_report.render_model(json.loads((gated / "report.json").read_text()))
    assert "pip install onnx-gate[html]" in page and "<svg" not in page
    assert "Candidates and the decision log" in page and "Search order" in page


def test_a_run_that_errors_still_gets_a_page_saying_so(tmp_path, gate_cli, browser):
    (tmp_path / "p.yaml").write_text("version: 1\nmodel: {path: missing.onnx}\n")
    result = gate_cli("run", tmp_path / "p.yaml", "-o", tmp_path / "out", "-q")
    assert result.exit_code == 2
    page = tmp_path / "out" / "report.html"
    assert _open(browser, page) == []
    text = browser.execute_script("return document.body.innerText")
    assert "ERROR" in text and "missing.onnx" in text
