"""The finetune stage as a user runs it: a real `sonotune finetune` killed with SIGKILL mid-run and restarted,
then compared with an uninterrupted run of the same seed (real Keras models, real MLflow SQLite store)."""

import json
import signal
import subprocess
import time

import numpy as np
import pandas as pd
import pytest

from sonotune.config import load_params
from sonotune.stages.finetune import FinishedFold, summary_table
from sonotune.metrics import binary_metrics, summarize
from sonotune.outputs import write_plot_data
from tests.workspace import copy_repo, project_env, run, tiny_params

CONFIG = ["--dataset", "phantom", "--backbone", "vgg16", "--strategy", "0"]
STORE = ".sonotune/resume/phantom/vgg16/0/mlp"
N_FOLDS = 3


def _finetune(repo, check=True):
    return run(["sonotune", "finetune", *CONFIG], repo, check=check)


def _kill_after_first_fold(repo, timeout=600):
    """Start the stage, wait until fold 0 is persisted, SIGKILL it; return the folds persisted at kill time."""
    marker = repo / STORE / "fold_0.json"
    process = subprocess.Popen(["sonotune", "finetune", *CONFIG], cwd=repo, env=project_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            assert process.poll() is None, f"finetune exited ({process.returncode}) before persisting fold 0"
            assert time.monotonic() < deadline, "fold 0 was not persisted in time"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return sorted(int(p.stem.split("_")[1]) for p in (repo / STORE).glob("fold_*.json"))


def _all_runs(repo) -> pd.DataFrame:
    import mlflow
    from mlflow.entities import ViewType

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(search_all_experiments=True, run_view_type=ViewType.ALL)


def _mlflow_client(repo):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")


@pytest.fixture
def finetune_repo(tmp_path):
    params = tiny_params(**{"cv.n_splits": N_FOLDS, "finetune.log_models": "best"})
    repo = copy_repo(tmp_path / "repo", params)
    run(["sonotune", "prepare", "--dataset", "phantom"], repo)
    return repo


def test_killed_run_resumes_missing_folds_into_one_parent_and_matches_an_uninterrupted_run(finetune_repo):
    repo = finetune_repo
    persisted = _kill_after_first_fold(repo)
    assert 0 in persisted and len(persisted) < N_FOLDS, f"kill came too late to test resuming: {persisted}"
    fold0_run = json.loads((repo / STORE / "fold_0.json").read_text())["run_id"]
    crashed = _all_runs(repo)
    assert (crashed["status"] == "RUNNING").any()  # the crash left the parent (and a fold) RUNNING

    out = _finetune(repo).stdout
    assert f"resuming, folds {persisted} already done" in out

    runs = _all_runs(repo)
    assert not (runs["status"] == "RUNNING").any(), runs[["run_id", "status", "tags.fold"]]
    parents = runs[runs["tags.fold"] == "all"]
    assert len(parents) == 1 and parents["status"].item() == "FINISHED"
    parent_id = parents["run_id"].item()
    assert parent_id == crashed.loc[crashed["tags.fold"] == "all", "run_id"].item()  # resumed, not replaced
    assert parents["tags.dataset_n_images"].item() == "36" and len(parents["tags.dataset_digest"].item()) == 16
    client = _mlflow_client(repo)
    live = [client.get_run(r) for r in runs["run_id"]]
    live = [r for r in live if r.info.lifecycle_stage == "active" and r.data.tags["fold"] != "all"]
    assert sorted(r.data.tags["fold"] for r in live) == [str(k) for k in range(N_FOLDS)]
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parent_id for r in live)
    assert fold0_run in {r.info.run_id for r in live}  # the persisted fold was kept, not retrained
    assert all("epoch_loss" in r.data.metrics and "fold_seconds" in r.data.metrics for r in live)

    # log_models: best -> exactly one model, on the fold with the best validation AUC
    models = client.search_logged_models([parents["experiment_id"].item()])
    assert len(models) == 1
    best_fold = parents["tags.best_fold"].item()
    best_run = next(r for r in live if r.data.tags["fold"] == best_fold)
    assert models[0].source_run_id == best_run.info.run_id
    assert models[0].name == best_run.info.run_name and models[0].tags["fold"] == best_fold  # named like its run
    parent = client.get_run(parent_id)  # the configuration as params, nothing twice, the dataset as an input
    assert parent.data.params["config.classifier"] == "mlp" and "input_size" not in parent.data.params
    assert [i.dataset.name for i in parent.inputs.dataset_inputs] == ["phantom"]
    record = json.loads((repo / "runs/phantom/vgg16/0/mlp/mlflow.json").read_text())  # for the svm parent
    assert {k: str(v) for k, v in record["params"].items()} == {
        k: v for k, v in parent.data.params.items() if not k.startswith("config.")}
    best_of = min if load_params(repo / "params.yaml").finetune.monitor == "val_loss" else max
    assert best_run.data.metrics["best_monitored"] == best_of(r.data.metrics["best_monitored"] for r in live)

    # outputs complete, resume store cleared
    oof = pd.read_csv(repo / "runs/phantom/vgg16/0/mlp/oof.csv")
    assert list(oof.columns) == ["path", "group", "label", "y", "fold", "score"]
    assert sorted(oof["fold"].unique()) == list(range(N_FOLDS)) and oof["score"].notna().all()
    with np.load(repo / "runs/phantom/vgg16/0/mlp/features.npz") as features:
        assert sorted(features.files) == sorted(f"{k}_{i}" for k in ("pooled", "dense") for i in range(N_FOLDS))
        assert all(features[name].shape[0] == len(oof) for name in features.files)
    assert not (repo / ".sonotune").exists()

    # same seed, fresh uninterrupted run: identical folds, scores and metrics
    metrics = json.loads((repo / "runs/phantom/vgg16/0/mlp_metrics.json").read_text())
    _finetune(repo)
    again = pd.read_csv(repo / "runs/phantom/vgg16/0/mlp/oof.csv")
    assert again["fold"].tolist() == oof["fold"].tolist()
    np.testing.assert_array_equal(again["score"].to_numpy(), oof["score"].to_numpy())
    assert json.loads((repo / "runs/phantom/vgg16/0/mlp_metrics.json").read_text())["mean"] == metrics["mean"]
    assert (_all_runs(repo)["tags.fold"] == "all").sum() == 2  # a new run of a finished stage is a new parent


def test_changed_params_discard_the_store_and_fail_its_parent(finetune_repo):
    repo = finetune_repo
    _kill_after_first_fold(repo)
    crashed_parent = _all_runs(repo).query("`tags.fold` == 'all'")["run_id"].item()
    params = (repo / "params.yaml").read_text().replace("epochs: 2", "epochs: 1")
    (repo / "params.yaml").write_text(params)

    out = _finetune(repo).stdout
    assert "resuming" not in out
    runs = _all_runs(repo)
    assert not (runs["status"] == "RUNNING").any()
    parents = runs[runs["tags.fold"] == "all"].set_index("run_id")
    assert parents.loc[crashed_parent, "status"] == "FAILED"
    assert (parents.drop(index=crashed_parent)["status"] == "FINISHED").sum() == 1


def test_plot_data_and_summary_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 6)
    oof = pd.DataFrame({"y": y, "fold": np.repeat([0, 1, 2], 4), "score": rng.random(12)})
    (tmp_path / "runs/d/b/15").mkdir(parents=True)
    write_plot_data("d", "b", 15, "mlp", oof, 0.5)
    roc = pd.read_csv(tmp_path / "runs/d/b/15/mlp_roc_folds.csv", dtype={"fold": str})
    assert list(roc.columns) == ["fold", "fpr", "tpr"] and set(roc["fold"]) == {"0", "1", "2", "pooled"}
    confusion = pd.read_csv(tmp_path / "runs/d/b/15/mlp_confusion.csv")
    pooled = binary_metrics(y, oof["score"], 0.5)
    counts = confusion.value_counts(["actual", "predicted"])
    assert counts.get(("malignant", "malignant"), 0) == pooled["tp"]
    assert counts.get(("benign", "malignant"), 0) == pooled["fp"]

    results = [FinishedFold(k, "r", binary_metrics(part["y"], part["score"], 0.5), 1, 0.7, 2.0,
                          part["score"].to_numpy(), np.zeros(1), np.zeros(1)) for k, part in oof.groupby("fold")]
    table = summary_table("d b 15%", results, summarize([r.metrics for r in results]), pooled)
    lines = table.splitlines()
    assert lines[0] == "d b 15%" and len(lines) == 2 + 3 + 2
    assert lines[-1].split()[0] == "pooled" and float(lines[-1].split()[1]) == pytest.approx(pooled["auc"], abs=5e-4)


# --- repeated cross-validation ------------------------------------------------------------------------------

def _kill_when(repo, marker, timeout=900):
    """Start the stage, SIGKILL it once `marker` (a fold record in the store) exists; return the persisted
    (repeat, fold) keys at kill time."""
    process = subprocess.Popen(["sonotune", "finetune", *CONFIG], cwd=repo, env=project_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not (repo / STORE / marker).exists():
            assert process.poll() is None, f"finetune exited ({process.returncode}) before persisting {marker}"
            assert time.monotonic() < deadline, f"{marker} was not persisted in time"
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL
    records = [json.loads(p.read_text()) for p in (repo / STORE).glob("*fold_*.json")]
    return sorted((r["repeat"], r["fold"]) for r in records)


def test_two_repeats_through_finetune_and_svm_resume_mid_repeat_and_keep_repeat_0_as_the_single_split(tmp_path):
    import yaml

    from sonotune.config import parse_params
    from sonotune.stages.report.load import load_study

    params = tiny_params(**{"cv.n_splits": N_FOLDS, "cv.repeats": 2, "finetune.log_models": "best",
                            "finetune.epochs": 1})
    repo = copy_repo(tmp_path / "repo", params)
    run(["sonotune", "prepare", "--dataset", "phantom"], repo)
    persisted = _kill_when(repo, "repeat1_fold_0.json")  # mid-repeat: repeat 1's last fold not yet trained
    assert (0, 2) in persisted and (1, 0) in persisted and (1, 2) not in persisted, persisted

    out = _finetune(repo).stdout
    assert f"resuming, (repeat, fold) {persisted} already done" in out
    runs = _all_runs(repo)
    assert not (runs["status"] == "RUNNING").any()
    parents = runs[runs["tags.fold"] == "all"]
    assert len(parents) == 1 and parents["status"].item() == "FINISHED" and "tags.best_fold" in parents
    client = _mlflow_client(repo)
    live = [client.get_run(r) for r in runs["run_id"]]
    live = [r for r in live if r.info.lifecycle_stage == "active" and r.data.tags["fold"] != "all"]
    expected = [(r, k) for r in range(2) for k in range(N_FOLDS)]
    assert sorted((int(r.data.tags["repeat"]), int(r.data.tags["fold"])) for r in live) == expected
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parents["run_id"].item()
               for r in live)
    assert {r.info.run_name for r in live} >= {"vgg16-0-mlp-fold0", "vgg16-0-mlp-repeat1-fold0"}

    stage = repo / "runs/phantom/vgg16/0"
    oof = pd.read_csv(stage / "mlp/oof.csv")
    assert list(oof.columns) == ["path", "group", "label", "y", "repeat", "fold", "score"]
    assert len(oof) == 2 * 36 and oof["score"].notna().all()
    by_repeat = {r: part.reset_index(drop=True) for r, part in oof.groupby("repeat")}
    assert by_repeat[0]["path"].tolist() == by_repeat[1]["path"].tolist()  # one score per image per repeat
    assert not by_repeat[0]["fold"].equals(by_repeat[1]["fold"])  # a fresh split
    with np.load(stage / "mlp/features.npz") as features:
        assert sorted(features.files) == sorted(
            f"{kind}_{k}" if r == 0 else f"{kind}_repeat{r}_{k}" for kind in ("pooled", "dense") for r, k in expected)
    metrics = json.loads((stage / "mlp_metrics.json").read_text())
    assert [(f["repeat"], f["fold"]) for f in metrics["folds"]] == expected and len(metrics["pooled_repeats"]) == 2
    assert metrics["mean"]["auc_mean"] == pytest.approx(np.mean([f["auc"] for f in metrics["folds"]]))

    # the svm stage, per (repeat, fold) on that repeat's split
    run(["sonotune", "svm", *CONFIG], repo)
    svm = pd.read_csv(stage / "svm/oof.csv")
    assert svm[["path", "repeat", "fold"]].equals(oof[["path", "repeat", "fold"]]) and svm["score"].notna().all()
    svm_metrics = json.loads((stage / "svm_metrics.json").read_text())
    assert [(f["repeat"], f["fold"]) for f in svm_metrics["folds"]] == expected
    assert len(svm_metrics["chosen_c"]) == 2 * N_FOLDS
    svm_runs = _all_runs(repo).query("`tags.classifier` == 'svm' and `tags.fold` != 'all'")
    assert sorted(zip(svm_runs["tags.repeat"].astype(int), svm_runs["tags.fold"].astype(int))) == expected

    # the report's loader: repeat 0 as before, every repeat on request
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(repo)
        study = load_study(parse_params(tiny_params(**{"study.strategies": [0], "cv.repeats": 2})))
    assert study.results[["n_folds", "n_repeats"]].drop_duplicates().values.tolist() == [[N_FOLDS, 2]]
    assert len(study.predictions["phantom"]) == 36 and "repeat" not in study.predictions["phantom"]
    assert study.by_repeat["phantom"]["repeat"].value_counts().to_dict() == {0: 36, 1: 36}
    np.testing.assert_array_equal(study.predictions["phantom"]["vgg16/0/mlp"], by_repeat[0]["score"])

    # repeats: 1 trains exactly repeat 0: the single split's outputs (no repeat column) and scores
    single = yaml.safe_load((repo / "params.yaml").read_text())
    single["cv"]["repeats"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(single, sort_keys=False))
    _finetune(repo)
    again = pd.read_csv(stage / "mlp/oof.csv")
    assert list(again.columns) == ["path", "group", "label", "y", "fold", "score"]
    assert again["fold"].tolist() == by_repeat[0]["fold"].tolist()
    np.testing.assert_array_equal(again["score"].to_numpy(), by_repeat[0]["score"].to_numpy())
    assert "repeat" not in json.loads((stage / "mlp_metrics.json").read_text())["folds"][0]
