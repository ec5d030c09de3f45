"""`dvc plots show` offline: the page template `make install` writes (`sonotune plots-template`) inlines Vega,
Vega-Lite and vega-embed, so the page DVC writes draws every plot in a Chromium with no network; DVC's own page
(its libraries from a CDN) draws none there, which shows the browser check can fail."""

from __future__ import annotations

import re

import pytest

from sonotune.offline_plots import offline_template
from tests.test_screenshots import _script
from tests.workspace import run

DVC_DEFAULT_PAGE = """<!DOCTYPE html><html><head>{scripts}</head><body>{plot_divs}</body></html>"""


def test_the_template_inlines_vega_and_requests_nothing():
    page = offline_template()
    assert "{plot_divs}" in page and "{scripts}" not in page  # {scripts}: DVC's CDN tags, left out
    assert not re.search(r"""<script[^>]*\bsrc=""", page) and not re.search(r"""(href|src)=["']?(https?:|//)""", page)
    assert "vegaEmbed" in page and len(page) > 500_000


@pytest.mark.e2e
def test_dvc_plots_show_draws_every_plot_with_the_network_blocked(demo_repro, tmp_path):
    repo = demo_repro["repo"]
    script = _script()
    run(["sonotune", "plots-template"], repo)  # as make install does in a checkout
    offline = script.dvc_plots_page(repo, tmp_path / "offline")
    (tmp_path / "default.html").write_text(DVC_DEFAULT_PAGE)
    run(["dvc", "plots", "show", "-o", str(tmp_path / "cdn"), "--html-template", str(tmp_path / "default.html")], repo)
    assert "cdn.jsdelivr.net" in (tmp_path / "cdn" / "index.html").read_text()
    chromium = script.find_chromium()
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("no Playwright (pip install -e '.[test]'): the page was not opened in a browser")
    if chromium is None:
        pytest.skip("no Chromium at /usr/bin/chromium(-headless-shell); apt-get install chromium-headless-shell")
    with script.offline_page(chromium) as (page, outside):
        drawn = script.drawn_dvc_plots(page, offline)
        assert outside == []
        assert drawn == [True, True]  # AUC against strategy, every ROC
        assert script.drawn_dvc_plots(page, tmp_path / "cdn" / "index.html") == [False, False]
        assert outside and all("cdn.jsdelivr.net" in url for url in outside)  # tried, blocked
