"""The report stage on synthetic stage outputs (fast), and the tiny pipeline against a real `mlflow server`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sonotune.stages import report
from sonotune.config import parse_params
from sonotune.metrics import binary_metrics, summarize
from sonotune.outputs import write_stage_outputs
from tests.conftest import BIN, copy_repo, project_env, run, tiny_params

N_IMAGES, N_FOLDS = 120, 3


def _params(backbones=("vgg16", "resnet50"), strategies=(0, 15, 50), **report_cfg):
    raw = tiny_params(**{"study.backbones": list(backbones), "study.strategies": list(strategies)})
    raw["report"] = {"n_bootstrap": 200, "log_to_mlflow": False} | report_cfg
    return parse_params(raw)


def _fake_study(params, quality: dict | None = None) -> None:
    """Stage outputs as `finetune` and `svm` write them, for scores whose signal grows with `quality`."""
    rng = np.random.default_rng(0)
    group = np.arange(N_IMAGES) // 2  # two images per group, one class per group, both classes in every fold
    y = (group % 5 < 2).astype(int)
    base = pd.DataFrame({"path": [f"img{i}.png" for i in range(N_IMAGES)], "group": [f"g{g}" for g in group],
                         "label": np.where(y, "malignant", "benign"), "y": y, "fold": group % N_FOLDS})
    folds = base["fold"].to_numpy()
    for dataset in params.study.datasets:
        for backbone in params.study.backbones:
            for strategy in params.study.strategies:
                for classifier in ("mlp", "svm"):
                    signal_ = (quality or {}).get((backbone, strategy, classifier), 0.5 + strategy / 50)
                    raw = signal_ * y + rng.normal(size=N_IMAGES)
                    score = 1 / (1 + np.exp(-raw)) if classifier == "mlp" else raw
                    threshold = report.THRESHOLDS[classifier]
                    per_fold = [binary_metrics(y[folds == k], score[folds == k], threshold) for k in range(N_FOLDS)]
                    extra = {"chosen_c": [1.0, 10.0, 0.1]} if classifier == "svm" else None
                    write_stage_outputs(dataset, backbone, strategy, classifier, base.assign(score=score), per_fold,
                                        summarize(per_fold), extra=extra)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_tables_match_the_per_fold_metrics(workdir):
    params = _params()
    _fake_study(params)
    text = report.run_report(params)
    reports = workdir / "reports"
    table = pd.read_csv(reports / "table3.csv")
    assert len(table) == 2 * 3 and list(table.columns[:3]) == ["dataset", "backbone", "strategy"]
    for row in table.itertuples():
        for classifier in ("mlp", "svm"):
            metrics = json.loads((workdir / f"runs/phantom/{row.backbone}/{row.strategy}/{classifier}_metrics.json").read_text())
            fold_aucs = [fold["auc"] for fold in metrics["folds"]]
            assert getattr(row, f"{classifier}_auc") == pytest.approx(np.mean(fold_aucs), abs=1e-4)
            assert getattr(row, f"{classifier}_auc_sd") == pytest.approx(np.std(fold_aucs, ddof=1), abs=1e-4)
            assert getattr(row, f"{classifier}_auc_low") <= getattr(row, f"{classifier}_auc") <= getattr(row, f"{classifier}_auc_high")

    t4 = pd.read_csv(reports / "table4.csv")
    assert len(t4) == 2 and set(t4["strategy"]) == {15}
    svm = json.loads((workdir / "runs/phantom/vgg16/15/svm_metrics.json").read_text())
    row = t4[t4.backbone == "vgg16"].iloc[0]
    assert row.svm_precision == pytest.approx(np.mean([f["precision"] for f in svm["folds"]]), abs=1e-4)
    assert row.svm_sensitivity == pytest.approx(np.mean([f["recall"] for f in svm["folds"]]), abs=1e-4)
    assert row.chosen_c == "1, 10, 0.1"
    assert "| phantom | vgg16 |" in (reports / "table4.md").read_text()

    tests = pd.read_csv(reports / "comparisons.csv")
    # 3 strategy pairs × 2 backbones × 2 classifiers, and MLP vs SVM for the 6 configurations
    assert len(tests) == 12 + 6
    assert (tests["p_holm"] >= tests["p_value"] - 1e-12).all()

    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["phantom"]["vgg16"]["15"]["mlp"]["auc"] == pytest.approx(table.loc[1, "mlp_auc"], abs=1e-4)
    for name in ("auc_heatmap_phantom.png", "roc_phantom.png", "confusion_phantom.png"):
        assert (reports / "figures" / name).stat().st_size > 5000
    assert list(pd.read_csv(reports / "roc_best.csv").columns) == ["fpr", "mlp_tpr", "svm_tpr"]

    assert text == (reports / "summary.md").read_text()
    assert len(text.splitlines()) <= 40
    assert "Best: phantom / " in text and "- phantom / vgg16: " in text and "- phantom / resnet50: " in text


def test_summary_names_the_best_strategy_and_a_clear_winner(workdir):
    params = _params(backbones=("vgg16",), strategies=(0, 15, 50))
    quality = {("vgg16", 0, "mlp"): 0.0, ("vgg16", 15, "mlp"): 0.2, ("vgg16", 50, "mlp"): 4.0,
               ("vgg16", 0, "svm"): 0.0, ("vgg16", 15, "svm"): 0.1, ("vgg16", 50, "svm"): 0.3}
    _fake_study(params, quality)
    text = report.run_report(params)
    line = next(l for l in text.splitlines() if l.startswith("- phantom / vgg16:"))
    assert "50 % with MLP" in line and "runner-up 15 %" in line and "→ distinguishable" in line
    line = next(l for l in text.splitlines() if l.startswith("- phantom: SVM ahead in"))
    assert "of 3 configurations" in line and "(vgg16 50 %: MLP +0.4" in line


@pytest.mark.parametrize("test", ["delong", "bootstrap"])
def test_one_backbone_one_strategy_degrades_gracefully(workdir, test):
    params = _params(backbones=("vgg16",), strategies=(0,), paired_test=test)
    _fake_study(params)
    text = report.run_report(params)
    assert "the study holds one strategy, no runner-up to compare" in text
    assert "table4.md (0 %)" in text
    assert "does not hold; showing 0 %" in (workdir / "reports" / "table4.md").read_text()
    assert len(pd.read_csv(workdir / "reports" / "comparisons.csv")) == 1  # MLP vs SVM only


def test_missing_stage_output_is_one_clear_error(workdir):
    from sonotune.errors import DataError

    with pytest.raises(DataError, match=r"runs/phantom/vgg16/0/mlp_metrics.json: not found"):
        report.run_report(_params())


@pytest.fixture
def local_mlflow(workdir, monkeypatch):
    """The project's default store (SQLite under ./mlruns of the work dir); MLflow's global URI reset after."""
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
    mlflow.set_tracking_uri(None)


def test_intervals_go_onto_the_producing_parent_runs_only(local_mlflow):
    """Real MLflow (SQLite): the report adds CIs to the parents the stages made and creates no run."""
    import mlflow

    from sonotune import tracking

    params = _params(backbones=("vgg16",), strategies=(0, 15), log_to_mlflow=True)
    _fake_study(params)
    stale = None
    for strategy in (0, 15):
        for classifier in ("mlp", "svm"):
            mean = json.loads(Path(f"runs/phantom/vgg16/{strategy}/{classifier}_metrics.json").read_text())["mean"]
            if strategy == 0 and classifier == "mlp":  # an older run of the same configuration, other numbers
                with tracking.parent_run("phantom", "vgg16", strategy, classifier, params.protocol, {}) as old:
                    mlflow.log_metrics(mean | {"auc_mean": 0.123})
                stale = old.info.run_id
            with tracking.parent_run("phantom", "vgg16", strategy, classifier, params.protocol, {}):
                mlflow.log_metrics(mean)
    before = mlflow.search_runs(experiment_names=["sonotune-phantom"])
    text = report.run_report(params)
    after = mlflow.search_runs(experiment_names=["sonotune-phantom"])
    assert len(after) == len(before) == 5
    assert "intervals added to 4 parent runs" in text
    table = pd.read_csv("reports/table3.csv").set_index("strategy")
    fresh = after[after["run_id"] != stale]
    for _, run_ in fresh.iterrows():
        row = table.loc[int(run_["tags.strategy"])]
        classifier = run_["tags.classifier"]
        assert run_["metrics.auc_ci_low"] == pytest.approx(row[f"{classifier}_auc_low"], abs=1e-4)
        assert run_["metrics.auc_ci_high"] == pytest.approx(row[f"{classifier}_auc_high"], abs=1e-4)
        assert run_["params.strategy"] == run_["tags.strategy"] and run_["params.backbone"] == "vgg16"
    assert np.isnan(after.set_index("run_id").loc[stale, "metrics.auc_ci_low"])


# ---------------------------------------------------------------- real mlflow server, tiny pipeline


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` on 127.0.0.1 with a SQLite store; its whole process group is stopped at the end."""
    port = _free_port()
    store = tmp_path / "server"
    store.mkdir()
    log = (store / "server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
         "--artifacts-destination", str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=project_env(),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not become healthy:\n{(store / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        log.close()
        if not _group_ended(server.pid, timeout=30):
            os.killpg(server.pid, signal.SIGKILL)
            _group_ended(server.pid, timeout=10)
            raise AssertionError("a process of the mlflow server outlived SIGTERM by 30 s")


def _group_ended(pgid: int, timeout: float) -> bool:
    """True once no process of the group is left (the server's workers exit a little after it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.e2e
def test_tiny_pipeline_against_a_real_mlflow_server(tmp_path, mlflow_server):
    import mlflow

    repo = copy_repo(tmp_path / "repo", tiny_params())
    out = run(["dvc", "repro"], repo, env=project_env(MLFLOW_TRACKING_URI=mlflow_server)).stdout
    assert "intervals added to 4 parent runs" in out and f"Browse the runs: {mlflow_server}\n" in out
    assert not (repo / "mlruns" / "mlflow.db").exists()

    mlflow.set_tracking_uri(mlflow_server)
    try:
        parents = mlflow.search_runs(experiment_names=["sonotune-phantom"], filter_string="tags.fold = 'all'")
    finally:
        mlflow.set_tracking_uri(None)
    keys = sorted(zip(parents["tags.backbone"], parents["tags.strategy"], parents["tags.classifier"]))
    assert keys == sorted(("vgg16", s, c) for s in ("0", "15") for c in ("mlp", "svm"))  # one parent each
    table = pd.read_csv(repo / "reports" / "table3.csv").set_index("strategy")
    for _, parent in parents.iterrows():
        metrics = json.loads((repo / f"runs/phantom/vgg16/{parent['tags.strategy']}/"
                                      f"{parent['tags.classifier']}_metrics.json").read_text())["mean"]
        for name in ("auc_mean", "auc_sd", "accuracy_mean", "precision_mean", "recall_mean"):
            assert parent[f"metrics.{name}"] == pytest.approx(metrics[name])
        row = table.loc[int(parent["tags.strategy"])]
        assert parent["metrics.auc_ci_low"] == pytest.approx(row[f"{parent['tags.classifier']}_auc_low"], abs=1e-4)
        assert parent["metrics.auc_ci_low"] <= parent["metrics.auc_mean"] <= parent["metrics.auc_ci_high"]
