"""scripts/screenshots.py: which runs it shows and the pages it opens (no browser), and, where Playwright and a
Chromium are installed, the screenshots themselves from a real `mlflow server` (CI installs both; skipped with the reason where
either is missing)."""

from __future__ import annotations

import importlib.util
import json
import sys
import urllib.parse

import mlflow
import pytest
from PIL import Image

from sonotune import tracking
from tests.workspace import ROOT

SCRIPT = ROOT / "scripts" / "screenshots.py"


def _script():
    spec = importlib.util.spec_from_file_location("screenshots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def study_store(tmp_path, monkeypatch):
    """A store with parent runs of three configurations (one run twice, the older one superseded) and a fold run."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    ids = {}
    for backbone, strategy, classifier in [("vgg16", 15, "mlp"), ("vgg16", 0, "svm"), ("resnet50", 0, "mlp"),
                                           ("vgg16", 15, "mlp")]:
        with tracking.parent_run("phantom", backbone, strategy, classifier, "leakage_free", {}) as run:
            tracking.log_summary({"auc_mean": 0.6, "auc_sd": 0.1})
            with tracking.fold_run(run, 0):
                pass
        ids[(backbone, str(strategy), classifier)] = run.info.run_id
    yield tmp_path / "mlruns" / "mlflow.db", ids
    while mlflow.active_run():
        mlflow.end_run()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_the_newest_parent_of_each_configuration_is_shown_in_order(study_store):
    store, ids = study_store
    study = _script().find_study(f"sqlite:///{store}", "phantom")
    assert study.configurations == [("resnet50", "0", "mlp"), ("vgg16", "0", "svm"), ("vgg16", "15", "mlp")]
    assert study.run_ids == [ids[c] for c in study.configurations]  # the rerun of vgg16-15-mlp, not the first


def test_urls_open_the_compare_page_and_the_filtered_runs_table(study_store):
    store, _ = study_store
    script = _script()
    study = script.find_study(f"sqlite:///{store}", "phantom")
    compare = urllib.parse.unquote(script.compare_url("http://h", study))
    assert compare.startswith("http://h/#/compare-runs?runs=")
    assert json.loads(compare.split("runs=")[1].split("&")[0]) == study.run_ids
    runs = urllib.parse.unquote(script.runs_url("http://h", study))
    assert runs == f"http://h/#/experiments/{study.experiment_id}/runs?viewStateShareKey=parent-runs"


def test_a_missing_store_or_experiment_is_one_line(tmp_path):
    script = _script()
    with pytest.raises(SystemExit, match="no MLflow store"):
        script.main(["--store", str(tmp_path / "none.db")])
    with pytest.raises(SystemExit, match="no experiment sonotune-busi"):
        script.find_study(f"sqlite:///{tmp_path / 'empty.db'}", "busi")


def test_the_cross_strategy_figure_is_found_or_absent(tmp_path):
    script = _script()
    assert script.cross_strategy_figure(tmp_path) is None
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "auc_by_strategy_phantom.png").write_bytes(b"")
    assert script.cross_strategy_figure(tmp_path).name == "auc_by_strategy_phantom.png"


@pytest.mark.e2e
def test_screenshots_from_a_real_server(study_store, tmp_path):
    pytest.importorskip("playwright", reason="Playwright is not installed (pip install -e '.[screenshots]')")
    script = _script()
    if script.find_chromium() is None:
        pytest.skip("no Chromium at $CHROMIUM or /usr/bin/chromium(-headless-shell); apt-get install "
                    "chromium-headless-shell")
    store, _ = study_store
    out = tmp_path / "shots"
    assert script.main(["--store", str(store), "--out", str(out), "--reports", str(tmp_path / "none")]) == 0
    for name in ("mlflow_compare.png", "mlflow_runs_filter.png"):
        with Image.open(out / name) as image:
            assert image.size[0] >= 1000 and image.convert("L").getextrema()[0] < 128  # something dark drawn
