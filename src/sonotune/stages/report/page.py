"""The study page, `reports/index.html`: the whole study in one self-contained file that opens anywhere.

It holds the summary exactly as `findings.summary_text` wrote it (the same Markdown as reports/summary.md: this
module builds no sentence of its own), Tables 3 and 4 (the report's .md tables), every figure under
`reports/figures/` inlined as a data: URI, and, when the report logs to MLflow, the link to each dataset's parent
runs (`mlflow_runs.parent_table_urls`). No script, font or style sheet is fetched: the page makes no request, so it
renders offline, from an e-mail attachment or an MLflow artifact view. Markdown is rendered by markdown-it-py
(CommonMark with tables); the page is logged onto the parent runs beside the figures (`log_page`).
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from sonotune.config import Params
from sonotune.layout import REPORTS_ROOT

PAGE = REPORTS_ROOT / "index.html"
TABLES = (("Table 3: AUC of the MLP head and of the SVM", "table3.md"),
          ("Table 4: the other metrics", "table4.md"))
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } code { background: #f5f5f5; padding: 0 0.2em; }
nav a { margin-right: 1em; }
"""


def render_markdown(text: str) -> str:
    """Markdown (CommonMark and pipe tables) as HTML; raw HTML in the text is escaped, not passed through."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def data_uri(path: Path) -> str:
    """A PNG as a data: URI, so the page carries its figures."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figure_html(path: Path) -> str:
    name = html.escape(path.stem.replace("_", " "))
    return (f'<figure id="{html.escape(path.stem)}"><img src="{data_uri(path)}" alt="{name}">'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>")


def tables_html(reports: Path) -> str:
    parts = []
    for title, name in TABLES:
        path = reports / name
        if path.is_file():
            parts.append(f'<section id="{path.stem}"><h2>{html.escape(title)}</h2>'
                         f"{render_markdown(path.read_text())}</section>")
    return "".join(parts)


def links_html(urls: dict[str, str]) -> str:
    if not urls:
        return ""
    items = "".join(f'<li><a href="{html.escape(url)}">{html.escape(dataset)}: parent runs</a> (configuration and '
                    f"AUC columns, best first; start MLflow's UI first)</li>" for dataset, url in urls.items())
    return f'<section id="mlflow"><h2>MLflow runs</h2><ul>{items}</ul></section>'


def page_html(summary: str, reports: Path, urls: dict[str, str]) -> str:
    """The page: the summary (Markdown), the tables, every figure of `reports/figures`, the MLflow links."""
    figures = sorted((reports / "figures").glob("*.png"))
    sections = [("summary", "Summary"), ("table3", "Table 3"), ("table4", "Table 4"), ("figures", "Figures")]
    nav = "".join(f'<a href="#{anchor}">{label}</a>' for anchor, label in sections) + (
        '<a href="#mlflow">MLflow</a>' if urls else "")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>sonotune study</title><style>{STYLE}</style></head><body>"
            f"<nav>{nav}</nav>"
            f'<section id="summary">{render_markdown(summary)}</section>'
            f"{tables_html(reports)}"
            f'<section id="figures"><h2>Figures</h2>{"".join(figure_html(p) for p in figures)}</section>'
            f"{links_html(urls)}</body></html>\n")


def write_page(summary: str, results: pd.DataFrame, params: Params, reports: Path = REPORTS_ROOT) -> Path:
    """Write `reports/index.html` whole (a temporary file renamed) and log it onto the parent runs when the report
    logs to MLflow; return its path."""
    from sonotune.stages.report.mlflow_runs import log_page, parent_table_urls

    urls = parent_table_urls(results) if params.report.log_to_mlflow else {}
    path = reports / PAGE.name
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page_html(summary, reports, urls), encoding="utf-8")
    tmp.replace(path)
    if params.report.log_to_mlflow:
        log_page(results, params, path)
    return path
