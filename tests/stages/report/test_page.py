"""The study page reports/index.html: the summary and tables the report wrote, every figure inlined, no request;
opened in headless Chromium with the network blocked, it renders whole."""

from __future__ import annotations

import re
import shutil

import pytest

from sonotune.stages.report import run_report
from sonotune.stages.report.page import render_markdown
from tests.stages.report.helpers import fake_study, report_params


def _chromium() -> str | None:
    for candidate in ("/usr/bin/chromium-headless-shell", "/usr/bin/chromium"):
        if shutil.which(candidate):
            return candidate
    return None


def test_the_page_holds_the_summary_tables_and_figures_and_renders_offline(workdir):
    params = report_params()
    fake_study(params)
    run_report(params)
    reports = workdir / "reports"
    page = (reports / "index.html").read_text()
    # the summary exactly as summary.md has it (no sentence of the page's own), the tables as the .md files
    assert render_markdown((reports / "summary.md").read_text()) in page
    for table in ("table3.md", "table4.md"):
        assert render_markdown((reports / table).read_text()) in page
    figures = sorted((reports / "figures").glob("*.png"))
    assert figures and page.count('<img src="data:image/png;base64,') == len(figures)
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page) and "<script" not in page
    assert not (reports / ".index.html.tmp").exists()

    chromium = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("no Playwright (pip install -e '.[test]'): the page was not opened in a browser")
    if chromium is None:
        pytest.skip("no Chromium at /usr/bin/chromium(-headless-shell); apt-get install chromium-headless-shell")
    requested, blocked = [], []

    def block_network(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            tab = browser.new_page()
            tab.on("request", lambda request: requested.append(request.url))
            tab.route("**/*", block_network)
            tab.goto((reports / "index.html").as_uri())
            tab.wait_for_load_state("load")
            shown = tab.evaluate("""() => ({
                title: document.title,
                images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
                tables: document.querySelectorAll('table').length,
                text: document.body.innerText})""")
        finally:
            browser.close()
    assert blocked == [] and [url for url in requested if not url.startswith(("file:", "data:"))] == []
    assert shown["title"] == "sonotune study"
    assert len(shown["images"]) == len(figures) and all(shown["images"])
    assert shown["tables"] >= 2 and "Table 3" in shown["text"]
