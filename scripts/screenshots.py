"""The README's screenshots, made from the demo's MLflow store with headless Chromium (a dev tool).

    python scripts/screenshots.py                 # after `make demo`: writes docs/mlflow_compare.png, …

From the store (`--store`, default `mlruns/mlflow.db`, the demo's) it picks the dataset's experiment
(`sonotune-<dataset>`) and its newest finished parent run per configuration (`tags.fold = 'all'`), starts
`mlflow server` on 127.0.0.1 (a free port, read-only use), and with Playwright driving Chromium takes
- `docs/mlflow_compare.png`: the compare view of those parent runs, as MLflow opens it (default axes: nothing is
  clicked, so the picture shows what a newcomer sees);
- `docs/mlflow_runs_filter.png`: the experiment's runs table as the report's link opens it
  (`tracking.runs_table_url`: the saved view of the parent runs, configuration and AUC columns, best first; the
  script waits for the `auc_mean` column, so a view MLflow did not apply fails here);
- `docs/study_page.png`: the report's study page `reports/index.html`, opened from the file with every network
  request blocked (skipped with a note when the report wrote none);
- `docs/dvc_plots_offline.png`: the page `dvc plots show` writes (Vega inlined by the template `make install`
  writes, `sonotune plots-template`), opened with every network request blocked; fails unless every plot is drawn;
- `docs/auc_by_strategy.png` (the README's figure): the report's cross-strategy figure (`reports/figures/*strateg*.png`), copied as it
  is, or skipped with a note when the report wrote none.

Needs `pip install -e ".[screenshots]"` (Playwright's Python package) and a Chromium: the first of `--chromium`,
`$CHROMIUM`, /usr/bin/chromium-headless-shell, /usr/bin/chromium, or Playwright's own (`playwright install
chromium`). CI installs both (the `test` extra, apt's chromium-headless-shell in .ci/run); where either is
missing, tests/test_screenshots.py runs the parts without a browser and skips the rest with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
PARENTS = "tags.fold = 'all'"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium-headless-shell", "/usr/bin/chromium")
VIEWPORT = {"width": 1700, "height": 1000}


@dataclass(frozen=True)
class Study:
    """What the screenshots show: the experiment and its parent runs, one per configuration."""

    experiment_id: str
    run_ids: list[str]
    configurations: list[tuple[str, str, str]]  # (backbone, strategy, classifier), in the order of run_ids


def find_study(store_uri: str, dataset: str) -> Study:
    """The newest finished parent run of each configuration in `sonotune-<dataset>`, ordered by configuration."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name(f"sonotune-{dataset}")
    if experiment is None:
        raise SystemExit(f"{store_uri}: no experiment sonotune-{dataset}; run the demo first (`make demo`)")
    runs = client.search_runs([experiment.experiment_id], f"{PARENTS} and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1000)
    newest: dict[tuple[str, str, str], str] = {}
    for run in runs:
        key = tuple(run.data.tags.get(k, "") for k in ("backbone", "strategy", "classifier"))
        newest.setdefault(key, run.info.run_id)
    if not newest:
        raise SystemExit(f"{store_uri}: sonotune-{dataset} has no finished parent run; run the demo first")
    order = sorted(newest, key=lambda k: (k[0], int(k[1]) if k[1].isdigit() else k[1], k[2]))
    return Study(experiment.experiment_id, [newest[k] for k in order], order)


def compare_url(base: str, study: Study) -> str:
    """MLflow's compare page of the study's parent runs."""
    runs = urllib.parse.quote(json.dumps(study.run_ids, separators=(",", ":")))
    experiments = urllib.parse.quote(json.dumps([study.experiment_id]))
    return f"{base}/#/compare-runs?runs={runs}&experiments={experiments}"


def runs_url(base: str, study: Study) -> str:
    """The experiment's runs table on the saved view of its parent runs (the link the report prints)."""
    from sonotune.tracking import runs_table_url

    return runs_table_url(base, study.experiment_id)


def find_chromium(explicit: str | None = None) -> str | None:
    """A Chromium executable, or None to let Playwright use its own (`playwright install chromium`)."""
    for candidate in (explicit, os.environ.get("CHROMIUM"), *CHROMIUM_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def cross_strategy_figure(reports: Path) -> Path | None:
    """The report's cross-strategy figure (AUC against strategy), if it wrote one."""
    found = sorted((reports / "figures").glob("*strateg*.png"))
    return found[0] if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(store: Path, log: Path, timeout: float = 180.0) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 over the SQLite store; its process group is stopped on exit."""
    port = free_port()
    env = os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true"}
    mlflow = Path(sys.executable).with_name("mlflow")
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{store.resolve()}", "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while not _healthy(url):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"mlflow server did not start; its log: {log}")
                time.sleep(1)
            yield url
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _close_side_panels(page) -> None:
    """MLflow 3 opens an assistant panel beside the page; close it so the view gets the width."""
    for label in ("Close", "close"):
        button = page.locator(f"button[aria-label='{label}']")
        if button.count():
            try:
                button.first.click(timeout=2000)
            except Exception:  # noqa: BLE001 - no panel, or another layout: the screenshot is still taken
                pass
            return


def take_screenshots(base: str, study: Study, out: Path, chromium: str | None, wait_ms: int = 4000) -> list[Path]:
    """The compare view (default axes) and the filtered runs table, as PNGs under `out`."""
    from playwright.sync_api import sync_playwright

    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(compare_url(base, study))
            page.get_by_text("Parallel Coordinates Plot").first.wait_for(timeout=120_000)
            page.locator(".parcoords, svg .parcoords, .js-plotly-plot").first.wait_for(timeout=120_000)
            _close_side_panels(page)
            page.wait_for_timeout(wait_ms)
            path = out / "mlflow_compare.png"
            page.screenshot(path=str(path), clip={"x": 0, "y": 0, **VIEWPORT})
            written.append(path)

            page.goto(runs_url(base, study))
            page.get_by_text(study.configurations[0][0]).first.wait_for(timeout=120_000)
            page.get_by_text("auc_mean", exact=True).first.wait_for(timeout=60_000)  # the saved view's column
            _close_side_panels(page)
            page.mouse.move(VIEWPORT["width"] // 2, VIEWPORT["height"] - 50)  # no tooltip over the table
            page.wait_for_timeout(wait_ms)
            path = out / "mlflow_runs_filter.png"
            page.screenshot(path=str(path))
            written.append(path)
        finally:
            browser.close()
    return written


# no network at all: names resolve nowhere, any proxied request goes to a closed port, and (below) every request but
# the page's own file or data: URLs is aborted and recorded
OFFLINE_ARGS = ["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=<-loopback>"]
# the Vega plot divs of a `dvc plots show` page (image plots hold an <img>), and whether each
# holds a drawn chart; the wait ends when all do, or when the page has no vega-embed to draw with
VEGA_DIVS = "[...document.querySelectorAll('body > div[id]')].filter(d => !d.querySelector('img'))"
DVC_PLOTS_DRAWN = f"() => window.vegaEmbed === undefined || {VEGA_DIVS}.every(d => d.querySelector('svg, canvas'))"
DVC_PLOTS_COUNT = f"() => {VEGA_DIVS}.map(d => d.querySelector('svg, canvas') !== null)"


@contextmanager
def offline_page(chromium: str | None) -> Iterator[tuple[object, list[str]]]:
    """A Chromium tab with no network, and the list of the outside URLs it tried (aborted)."""
    from playwright.sync_api import sync_playwright

    outside: list[str] = []

    def block(route):
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=OFFLINE_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.route("**/*", block)
            yield page, outside
        finally:
            browser.close()


def study_page_screenshot(page_file: Path, out: Path, chromium: str | None) -> Path:
    """The study page as a browser without network shows it."""
    with offline_page(chromium) as (page, _):
        page.goto(page_file.resolve().as_uri())
        path = out / "study_page.png"
        page.screenshot(path=str(path))
    return path


def dvc_plots_page(repo: Path, out_dir: Path) -> Path:
    """`dvc plots show -o OUT_DIR` in `repo` (its page template: .dvc/config's `plots.html_template`)."""
    dvc = Path(sys.executable).with_name("dvc")  # the environment's, also when it is not on PATH
    subprocess.run([str(dvc) if dvc.is_file() else "dvc", "plots", "show", "-o", str(out_dir)], cwd=repo, check=True,
                   capture_output=True)
    return out_dir / "index.html"


def drawn_dvc_plots(page, page_file: Path, timeout_ms: int = 30_000) -> list[bool]:
    """Open a `dvc plots show` page; per plot, whether a chart was drawn (waits until all are, or none can be)."""
    page.goto(page_file.resolve().as_uri())
    page.wait_for_function(DVC_PLOTS_DRAWN, timeout=timeout_ms)
    return page.evaluate(DVC_PLOTS_COUNT)


def dvc_plots_screenshot(repo: Path, out: Path, chromium: str | None) -> Path:
    """`dvc plots show`'s page as a browser without network shows it (docs/dvc_plots_offline.png)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp, offline_page(chromium) as (page, _):
        drawn = drawn_dvc_plots(page, dvc_plots_page(repo, Path(tmp)))
        if not drawn or not all(drawn):
            raise SystemExit(f"dvc plots show: {drawn.count(True)} of {len(drawn)} plots drawn offline "
                             "(the template: `sonotune plots-template`, which make install runs)")
        path = out / "dvc_plots_offline.png"
        page.screenshot(path=str(path), full_page=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=ROOT / "mlruns" / "mlflow.db", help="the demo's SQLite store")
    parser.add_argument("--dataset", default="phantom")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--chromium", help="a Chromium executable (default: found, see the module docstring)")
    args = parser.parse_args(argv)
    if not args.store.is_file():
        raise SystemExit(f"{args.store}: no MLflow store; run the demo first (`make demo`)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        raise SystemExit('Playwright is not installed: pip install -e ".[screenshots]"') from None
    study = find_study(f"sqlite:///{args.store.resolve()}", args.dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    with mlflow_server(args.store, args.out / ".mlflow_server.log") as base:
        written = take_screenshots(base, study, args.out, find_chromium(args.chromium))
    (args.out / ".mlflow_server.log").unlink(missing_ok=True)
    if (args.reports / "index.html").is_file():
        written.append(study_page_screenshot(args.reports / "index.html", args.out, find_chromium(args.chromium)))
    else:
        print(f"note: no study page {args.reports / 'index.html'} (the report writes it); skipped")
    if (ROOT / "dvc.lock").is_file():
        written.append(dvc_plots_screenshot(ROOT, args.out, find_chromium(args.chromium)))
    else:
        print("note: no dvc.lock (run the demo first); the DVC plots page skipped")
    figure = cross_strategy_figure(args.reports)
    if figure is None:
        print(f"note: no cross-strategy figure under {args.reports / 'figures'} (the report writes it); skipped")
    else:
        written.append(Path(shutil.copyfile(figure, args.out / "auc_by_strategy.png")))
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
