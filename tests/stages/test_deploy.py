"""The deployable model end to end, as a user runs it: `sonotune deploy` (MLP and SVM heads) on the phantom,
`sonotune promote`, `sonotune predict` through the registry, and `mlflow models serve` over HTTP (real Keras,
real MLflow SQLite store and registry, a real scoring server on 127.0.0.1 stopped at the end). The versions' CV
tags come from stage metrics files written by `outputs.write_stage_outputs` as the stages call it."""

import base64
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

from tests.workspace import copy_repo, project_env, run, tiny_params

NAME = "sonotune-phantom"
CONFIG = ["--dataset", "phantom", "--backbone", "vgg16", "--strategy", "0"]


def write_cv_metrics(classifier: str, y: np.ndarray, groups: np.ndarray, separation: float, seed: int = 0) -> dict:
    """The outputs of stage `classifier` (finetune: mlp, svm) for phantom/vgg16/0 in the working directory, written
    by `write_stage_outputs` as the stage calls it, from synthetic out-of-fold scores (`separation`: how far the
    malignant scores sit above the benign ones); return the summary (the metrics file's `mean`)."""
    from sonotune.cv import outer_folds
    from sonotune.metrics import binary_metrics, summarize
    from sonotune.outputs import write_stage_outputs
    from sonotune.vocabulary import CLASS_NAMES, THRESHOLDS

    score = separation * y + np.random.default_rng(seed).normal(size=len(y))
    oof = pd.DataFrame({"path": [f"{i}.png" for i in range(len(y))], "group": groups,
                        "label": np.array(CLASS_NAMES)[y], "y": y, "fold": -1, "score": score})
    folds = outer_folds(y, groups, 3, seed)
    for fold, (_, test) in enumerate(folds):
        oof.loc[test, "fold"] = fold
    per_fold = [binary_metrics(y[test], score[test], THRESHOLDS[classifier]) for _, test in folds]
    summary = summarize(per_fold)
    extra = ({"pooled": binary_metrics(y, score, THRESHOLDS[classifier])} if classifier == "mlp"
             else {"chosen_c": [1.0] * len(folds)})
    write_stage_outputs("phantom", "vgg16", 0, classifier, oof, per_fold, summary, extra=extra)
    return summary


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A tiny study repo with the MLP head deployed as version 1 and the SVM head as version 2, each after its
    stage's metrics file was written (the MLP's cross-validated AUC is the better one)."""
    from sonotune.data.manifest import label_vector

    repo = copy_repo(tmp_path_factory.mktemp("deploy") / "repo", tiny_params(**{"finetune.epochs": 1}))
    run(["sonotune", "prepare", "--dataset", "phantom"], repo)
    manifest, _ = _prepared(repo)
    with contextlib.chdir(repo):
        for classifier, separation in (("mlp", 3.0), ("svm", 0.0)):
            write_cv_metrics(classifier, label_vector(manifest), manifest["group"].to_numpy(), separation)
    for classifier in ("mlp", "svm"):
        out = run(["sonotune", "deploy", *CONFIG, "--classifier", classifier], repo).stdout
        assert f"registered as {NAME} version" in out
    return repo


@pytest.fixture
def store(deployed, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{deployed / 'mlruns' / 'mlflow.db'}")
    monkeypatch.chdir(deployed)
    return deployed


def _prepared(repo: Path):
    from sonotune.data.prepared import load_prepared

    manifest, images = load_prepared("phantom", 32, repo / "prepared")
    return manifest, np.asarray(images)


def test_predict_through_the_registry_equals_the_models_own_evaluation(store):
    from sonotune.models.backbones import get_spec
    from sonotune.stages.predict import load_image_model

    run(["sonotune", "promote", NAME, "1"], store)
    out = store / "predictions.csv"
    result = run(["sonotune", "predict", f"models:/{NAME}@champion", "data/phantom", "--out", str(out)],
                 store)
    assert "wrote 36 predictions" in result.stdout
    predicted = pd.read_csv(out)
    assert list(predicted.columns) == ["path", "probability", "predicted_label", "threshold"]

    manifest, images = _prepared(store)
    keras_model = load_image_model(f"models:/{NAME}/1").keras_model
    own = keras_model.predict(get_spec("vgg16").preprocess()(images.astype(np.float32)), verbose=0)[:, 1]
    by_path = predicted.set_index("path")["probability"]
    np.testing.assert_allclose(by_path.loc[manifest["path"]].to_numpy(), own, rtol=0, atol=1e-5)
    assert (predicted["threshold"] == 0.5).all()
    assert ((predicted["probability"] >= 0.5) == (predicted["predicted_label"] == "malignant")).all()


def test_svm_pyfunc_equals_features_then_pipeline(store):
    import mlflow

    from sonotune.models.backbones import get_spec
    from sonotune.models.head import feature_model

    manifest, images = _prepared(store)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/2")
    from sonotune.serving import read_image_file

    # the model takes image bytes, never a path (it may be served to callers who are not trusted)
    served = pyfunc.predict(pd.DataFrame({"image": [read_image_file(Path(p)) for p in manifest["path"]]}))

    inner = pyfunc.unwrap_python_model().model
    features = feature_model(inner.keras_model).predict(
        get_spec("vgg16").preprocess()(images.astype(np.float32)), verbose=0)["pooled"]
    np.testing.assert_allclose(served["decision"], inner.pipeline.decision_function(features), atol=1e-4)
    np.testing.assert_allclose(served["probability"], inner.svm.predict_proba(features)[:, 1], atol=1e-5)
    # Platt scaling is monotone: the decision value and the probability rank the images alike
    order = np.argsort(served["decision"].to_numpy())
    assert np.all(np.diff(served["probability"].to_numpy()[order]) >= -1e-9)


def test_cv_tags_are_the_stage_metrics_files_cross_validated_auc(tmp_path, monkeypatch):
    from sonotune.stages.deploy import cv_tags

    monkeypatch.chdir(tmp_path)
    assert cv_tags("phantom", "vgg16", 0, "mlp") == {}  # the stage did not run here
    y = np.repeat(np.arange(18) % 2, 2)
    summary = write_cv_metrics("mlp", y, np.repeat(np.arange(18), 2), separation=1.0)
    assert cv_tags("phantom", "vgg16", 0, "mlp") == {"cv_auc_mean": str(summary["auc_mean"]),
                                                      "cv_auc_sd": str(summary["auc_sd"])}
    assert cv_tags("phantom", "vgg16", 0, "svm") == {}


def test_promote_without_version_picks_the_best_cross_validated_auc(store):
    from mlflow.tracking import MlflowClient

    from sonotune.layout import metrics_file
    from sonotune.stages.deploy import promote

    client = MlflowClient()
    auc = {}
    for version, classifier in (("1", "mlp"), ("2", "svm")):  # the tags `deploy` copied, none set here
        summary = json.loads(metrics_file("phantom", "vgg16", 0, classifier).read_text())["mean"]
        tags = client.get_model_version(NAME, version).tags
        assert tags["cv_auc_mean"] == str(summary["auc_mean"]) and tags["cv_auc_sd"] == str(summary["auc_sd"])
        auc[version] = summary["auc_mean"]
    assert auc["1"] > auc["2"]  # the best is not the latest version
    assert promote(NAME, None, "best") == "1"
    assert str(client.get_model_version_by_alias(NAME, "best").version) == "1"
    version = client.get_model_version(NAME, "1")
    assert version.tags["classifier"] == "mlp" and version.tags["backbone"] == "vgg16"
    result = run(["sonotune", "promote", NAME, "--alias", "cv-best"], store)  # as a user runs it: no VERSION
    assert f"models:/{NAME}@cv-best -> version 1" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["models:/no-such-model@champion", "data/phantom"], "cannot load the model"),
    (["runs:/0123456789abcdef/model", "data/phantom"], "cannot load the model"),
    (["models:/sonotune-phantom/1", "params.yaml"], "error: params.yaml: not an image"),
    (["models:/sonotune-phantom/1", "empty_folder"], "no image files in this folder"),
])
def test_bad_input_is_one_clear_line_and_exit_2(store, args, message):
    (store / "empty_folder").mkdir(exist_ok=True)
    result = run(["sonotune", "predict", *args, "--out", "bad.csv"], store, check=False)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sonotune predict:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not (store / "bad.csv").exists()


def test_a_mix_of_images_and_broken_files_scores_the_images_and_reports_each_broken_one(store):
    (store / "broken.png").write_bytes(b"truncated")
    result = run(["sonotune", "predict", f"models:/{NAME}/1", "data/phantom/benign", "broken.png",
                  "params.yaml", "--out", "mixed.csv"], store, check=False)
    assert result.returncode == 2
    skipped = [line for line in result.stderr.splitlines() if line.startswith("sonotune predict: skipped")]
    assert len(skipped) == 2 and "broken.png: not an image" in skipped[0]
    assert len(pd.read_csv(store / "mixed.csv")) == 24


def test_promote_unknown_version_is_one_line(store):
    result = run(["sonotune", "promote", NAME, "99"], store, check=False)
    assert result.returncode == 2 and "has no version 99 (versions: 1, 2)" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_mlflow_models_serve_answers_over_http(store):
    import mlflow

    path = sorted((store / "data/phantom/malignant").glob("*.png"))[0]
    expected = mlflow.pyfunc.load_model(f"models:/{NAME}/1").predict([path.read_bytes()])["probability"].iloc[0]
    port = _free_port()
    env = project_env(MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlruns' / 'mlflow.db'}")
    server = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=store, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "scoring server not healthy in 240 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        encoded = base64.b64encode(path.read_bytes()).decode()
        answer = _post(f"http://127.0.0.1:{port}/invocations",
                       {"dataframe_split": {"columns": ["image"], "data": [[encoded]]}})
        row = answer["predictions"][0]
        assert row["probability"] == pytest.approx(expected, abs=1e-5)
        assert row["predicted_label"] in ("benign", "malignant") and row["threshold"] == 0.5
    finally:
        _stop_group(server)
    assert not _group_alive(server.pid)  # no worker of the server's process group is left


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(server: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM the server's process group (mlflow + its uvicorn worker), SIGKILL what outlives `grace` s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if _group_alive(server.pid):
            os.killpg(server.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and (server.poll() is None or _group_alive(server.pid)):
            time.sleep(0.5)
        if not _group_alive(server.pid):
            break
    server.wait()
