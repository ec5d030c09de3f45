"""The intervals on the parent MLflow runs: a local SQLite store, and the tiny pipeline against a real `mlflow server`."""

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

from sonotune.stages.report import run_report
from tests.workspace import BIN, copy_repo, project_env, run, tiny_params
from tests.stages.report.helpers import fake_study, report_params


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

    params = report_params(backbones=("vgg16",), strategies=(0, 15), log_to_mlflow=True)
    fake_study(params, shift={("vgg16", 15, "svm"): 30.0})  # the SVM at 15 % calls every image malignant
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
    text = run_report(params)
    after = mlflow.search_runs(experiment_names=["sonotune-phantom"])
    assert len(after) == len(before) == 5
    assert "intervals added to 4 parent runs" in text
    experiment_id = mlflow.get_experiment_by_name("sonotune-phantom").experiment_id
    assert f"Parent runs of phantom (configuration and AUC columns, best first): http://127.0.0.1:5000/#/experiments/" \
           f"{experiment_id}/runs?viewStateShareKey=parent-runs" in text
    table = pd.read_csv("reports/table3.csv").set_index("strategy")
    fresh = after[after["run_id"] != stale]
    for _, run_ in fresh.iterrows():
        row = table.loc[int(run_["tags.strategy"])]
        classifier = run_["tags.classifier"]
        assert run_["metrics.auc_ci_low"] == pytest.approx(row[f"{classifier}_auc_low"], abs=1e-4)
        assert run_["metrics.auc_ci_high"] == pytest.approx(row[f"{classifier}_auc_high"], abs=1e-4)
        assert run_["params.config.strategy"] == tracking.strategy_label(run_["tags.strategy"]) and run_["params.config.backbone"] == "vgg16"
        assert run_["params.config.classifier"] == classifier
        assert run_["metrics.auc_mean"] == pytest.approx(row[f"{classifier}_auc"], abs=1e-4)
        assert np.isnan(run_.get("metrics.auc_oof_mean", np.nan))  # the same statistic: no second name
        one_class = run_["tags.strategy"] == "15" and classifier == "svm"
        assert run_["tags.single_class_folds"] == ("3" if one_class else "0")
        assert run_["tags.auc_ci"].startswith("95 % interval of auc_mean: clustered")
        # the study-wide cross-strategy figure, on every parent the report updated
        logged = mlflow.MlflowClient().list_artifacts(run_["run_id"], "report")
        # the study-wide cross-strategy figure and the study page
        assert [a.path for a in logged] == ["report/auc_by_strategy_phantom.png", "report/index.html"]
    assert np.isnan(after.set_index("run_id").loc[stale, "metrics.auc_ci_low"])
    assert mlflow.MlflowClient().list_artifacts(stale, "report") == []


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
    # MLP and SVM parents carry the same configuration params and tags (the SVM adds only the svm.* that apply)
    params = {c: {k for k in parents.columns if k.startswith("params.") and pd.notna(parent[k])}
              for c, parent in parents.set_index("tags.classifier", drop=False).groupby(level=0).first().iterrows()}
    assert params["svm"] - params["mlp"] == {k for k in params["svm"] if k.startswith("params.svm.")} != set()
    assert params["mlp"] <= params["svm"] and not any(".optuna." in k or "chosen_c" in k for k in params["svm"])
    tags = {c: {k for k in parents.columns if k.startswith("tags.") and pd.notna(parent[k])}
            for c, parent in parents.set_index("tags.classifier", drop=False).groupby(level=0).first().iterrows()}
    readme = {"dataset", "backbone", "strategy", "classifier", "fold", "protocol", "git_commit", "dvc_exp",
              "dataset_digest", "dataset_source", "dataset_n_images", "dataset_n_benign", "sonotune.fingerprint"}
    assert {f"tags.{t}" for t in readme} <= tags["mlp"] & tags["svm"]
    assert len(set(parents["tags.mlflow.runName"])) == len(parents)
