"""FT-SVM stage on synthetic finetune outputs: leakage, searches, shared Optuna storage, MLflow structure,
outputs and bad input. Real sklearn, Optuna (SQLite) and MLflow (SQLite); no CNN is trained here."""

from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from sonotune import tracking
from sonotune.cv import outer_folds, repeat_seed
from sonotune.errors import ConfigError, DataError
from sonotune.layout import stage_dir
from sonotune.stages.svm import run_svm
from sonotune.svm.search import svm_pipeline
from tests.workspace import ROOT, tiny_params
from tests.svm_helpers import (BACKBONE, DATASET, N_FOLDS, RECORD_PARAMS, RECORD_TAGS, STRATEGY, fitted_rows,
                               recording_pipeline, svm_params, write_finetune_output)

OPTUNA = {"svm.search": "optuna", "svm.optuna.n_trials": 3}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working directory with a synthetic finetune output and its own MLflow store."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tests = write_finetune_output(tmp_path)
    return tmp_path, tests


def _stage_run(tmp_path_factory, name, **overrides):
    """Run the stage once (recording every fitted row) in its own directory, for several tests to inspect."""
    root = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        tests = write_finetune_output(root)
        summary = run_svm(svm_params(**overrides), DATASET, BACKBONE, STRATEGY,
                          estimator=recording_pipeline(root / "fits.log"))
    return root, tests, summary


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    return _stage_run(tmp_path_factory, "grid")


@pytest.fixture(scope="module")
def optuna_run(tmp_path_factory):
    return _stage_run(tmp_path_factory, "optuna", **OPTUNA)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory):
    return _stage_run(tmp_path_factory, "paper", protocol="paper")


def _features(root, layer, fold):
    with np.load(root / "runs/phantom/vgg16/15/mlp/features.npz") as stored:
        return stored[f"{layer}_{fold}"]


def _runs(root) -> pd.DataFrame:
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"sonotune-{DATASET}")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return pd.DataFrame([{"run_id": r.info.run_id, "status": r.info.status, "parent": r.data.tags.get("mlflow.parentRunId"),
                          **r.data.tags, **{f"param.{k}": v for k, v in r.data.params.items()},
                          **{f"metric.{k}": v for k, v in r.data.metrics.items()}} for r in runs])


# --- leakage: asserted on the rows every fit saw -------------------------------------------------------------

@pytest.mark.parametrize("stage_run", ["grid_run", "optuna_run"])
def test_leakage_free_search_never_fits_a_test_fold_row(stage_run, request):
    root, tests, _ = request.getfixturevalue(stage_run)
    n = sum(len(t) for t in tests.values())
    for fold, test in tests.items():
        seen = fitted_rows(root / "fits.log", _features(root, "pooled", fold))
        assert seen.isdisjoint(test), f"fold {fold}: fitted on test rows {sorted(seen & set(test))}"
        # not vacuous: the refit saw every training row of the fold
        assert seen == set(range(n)) - set(test)


def test_paper_protocol_fits_the_test_fold_rows(paper_run):
    """The recorder does detect a leak: the paper's protocol searches C over every image."""
    root, tests, _ = paper_run
    for fold, test in tests.items():
        assert set(test) <= fitted_rows(root / "fits.log", _features(root, "pooled", fold))


def test_dense_layer_is_the_one_used(workdir):
    root, tests = workdir
    log = root / "fits.log"
    run_svm(svm_params(**{"svm.features": "dense"}), DATASET, BACKBONE, STRATEGY, estimator=recording_pipeline(log))
    assert fitted_rows(log, _features(root, "dense", 0)) and not fitted_rows(log, _features(root, "pooled", 0))


# --- outputs ------------------------------------------------------------------------------------------------

def test_grid_outputs_metrics_scores_and_chosen_c(grid_run):
    root, tests, summary = grid_run
    metrics = json.loads((root / "runs/phantom/vgg16/15/svm_metrics.json").read_text())
    assert len(metrics["folds"]) == N_FOLDS and set(metrics["chosen_c"]) <= {0.1, 1.0, 10.0, 100.0}
    assert metrics["mean"] == summary and summary["auc_mean"] > 0.75  # the synthetic classes are separable-ish
    oof = pd.read_csv(root / "runs/phantom/vgg16/15/svm/oof.csv")
    mlp = pd.read_csv(root / "runs/phantom/vgg16/15/mlp/oof.csv")
    assert oof["path"].tolist() == mlp["path"].tolist() and oof["fold"].tolist() == mlp["fold"].tolist()
    assert oof["score"].notna().all() and (oof["score"] < 0).any() and (oof["score"] > 0).any()  # decision scores
    for fold, test in tests.items():
        assert oof.loc[test, "C"].unique().tolist() == [metrics["chosen_c"][fold]]
    searched = pd.read_csv(root / "runs/phantom/vgg16/15/svm/c_search.csv")
    assert len(searched) == 4 * N_FOLDS
    assert pd.read_csv(root / "runs/phantom/vgg16/15/svm_roc.csv").columns.tolist() == ["fpr", "tpr"]
    assert not (root / "runs/phantom/vgg16/15/svm/optuna.db").exists()
    assert (_runs(root)["status"] == "FINISHED").all()


def test_paper_protocol_scores_by_cv_over_the_whole_dataset(paper_run):
    root, _, _ = paper_run
    metrics = json.loads((root / "runs/phantom/vgg16/15/svm_metrics.json").read_text())
    n = len(pd.read_csv(root / "runs/phantom/vgg16/15/mlp/oof.csv"))
    for fold in metrics["folds"]:
        assert fold["tp"] + fold["fp"] + fold["tn"] + fold["fn"] == n  # every image is scored
    folds = _runs(root).query("fold != 'all'").sort_values("fold")
    assert np.allclose(folds["metric.auc"], folds["metric.inner_cv_auc"])  # scored by the search's own CV
    assert (folds["protocol"] == "paper").all()


def test_optuna_default_storage_lands_in_the_stage_output(optuna_run):
    root, _, _ = optuna_run
    storage = f"sqlite:///{root / 'runs/phantom/vgg16/15/svm/optuna.db'}"
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == [f"phantom-vgg16-15-svm-leakage_free-pooled-fold{k}" for k in range(N_FOLDS)]
    for name in names:
        assert len(optuna.load_study(study_name=name, storage=storage).trials) == 3
    searched = pd.read_csv(root / "runs/phantom/vgg16/15/svm/c_search.csv")
    assert len(searched) == 3 * N_FOLDS and searched["C"].between(1e-4, 100.0).all()


# --- MLflow structure ---------------------------------------------------------------------------------------

def test_mlflow_parent_fold_and_trial_runs(optuna_run):
    root, _, _ = optuna_run
    runs = _runs(root)
    assert (runs["status"] == "FINISHED").all() and (runs["classifier"] == "svm").all()
    parent = runs[runs["fold"] == "all"]
    assert len(parent) == 1 and parent["parent"].isna().all()
    parent_id = parent["run_id"].item()
    assert parent["optuna_storage"].item().endswith("runs/phantom/vgg16/15/svm/optuna.db")
    folds = runs[runs["parent"] == parent_id]
    assert sorted(folds["fold"]) == ["0", "1", "2"] and folds["optuna_trial"].isna().all()
    assert folds["param.C"].notna().all() and folds["metric.auc"].between(0, 1).all()
    trials = runs[runs["optuna_trial"].notna()]
    assert len(trials) == 3 * N_FOLDS
    assert set(trials["parent"]) == set(folds["run_id"])
    for fold_id, fold_trials in trials.groupby("parent"):
        fold = folds.set_index("run_id").loc[fold_id]
        assert (fold_trials["fold"] == fold["fold"]).all()
        assert float(fold["param.C"]) in set(fold_trials["param.C"].astype(float))
        assert fold_trials["metric.inner_cv_auc"].max() == pytest.approx(fold["metric.inner_cv_auc"])
    for tag in ("dataset", "backbone", "strategy", "protocol", "git_commit", "dvc_exp", "dataset_digest"):
        assert runs[tag].notna().all(), tag
    # the parent: the finetune parent's configuration params and tags, the svm.* that apply, its own fingerprint
    row = parent.iloc[0]
    params = {k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.") and pd.notna(v)}
    assert params.items() >= {k: str(v) for k, v in RECORD_PARAMS.items()}.items()
    assert params["config.classifier"] == "svm" and params["config.strategy"] == tracking.strategy_label(STRATEGY)
    assert params["svm.optuna.n_trials"] == "3" and "svm.c_grid" not in params
    assert row["dataset_digest"] == RECORD_TAGS["dataset_digest"]
    assert row["sonotune.fingerprint"] not in (None, RECORD_TAGS["sonotune.fingerprint"])
    assert not [name for name in row.index if name.startswith("metric.auc_mean_")]  # one name per meaning
    # the fitted pipeline of each fold, logged with mlflow.sklearn, loads and scores
    client = mlflow.MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(f"sonotune-{DATASET}").experiment_id
    models = client.search_logged_models(experiment_ids=[experiment_id])
    assert sorted(m.source_run_id for m in models) == sorted(folds["run_id"])
    names = folds.set_index("run_id")["fold"].to_dict()
    for m in models:  # named and tagged like their fold run (not all `svm`)
        assert m.name == f"vgg16-15-svm-fold{names[m.source_run_id]}" and m.tags["fold"] == names[m.source_run_id]
    inputs = client.get_run(parent_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [(DATASET, RECORD_TAGS["dataset_digest"])]
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.sklearn.load_model(f"models:/{models[0].model_id}")
    assert model.named_steps["svc"].C in set(folds["param.C"].astype(float))


def test_no_run_is_left_running_when_the_search_fails(workdir):
    root, _ = workdir
    bad = svm_pipeline().set_params(svc__kernel="not-a-kernel")
    with pytest.raises(ValueError):
        run_svm(svm_params(), DATASET, BACKBONE, STRATEGY, estimator=bad)
    assert set(_runs(root)["status"]) == {"FAILED"}
    assert not (root / "runs/phantom/vgg16/15/svm").exists()


# --- repeated cross-validation -----------------------------------------------------------------------------

def _add_second_repeat(root) -> dict[int, np.ndarray]:
    """Turn the synthetic finetune output into two repeats: repeat 1 is a fresh split of the same images with
    its own feature arrays (as finetune writes them with cv.repeats: 2). Returns repeat 1's test indices."""
    out = root / stage_dir(DATASET, BACKBONE, STRATEGY, "mlp")
    rows = pd.read_csv(out / "oof.csv")
    y, groups = rows["y"].to_numpy(), rows["group"].to_numpy()
    folds, tests = np.full(len(y), -1), {}
    for k, (_, test) in enumerate(outer_folds(y, groups, N_FOLDS, seed=repeat_seed(42, 1))):
        folds[test], tests[k] = k, test
    both = pd.concat([rows.assign(repeat=0), rows.assign(repeat=1, fold=folds)], ignore_index=True)
    both[["path", "group", "label", "y", "repeat", "fold", "score"]].to_csv(out / "oof.csv", index=False)
    rng = np.random.default_rng(5)
    with np.load(out / "features.npz") as stored:
        arrays = {name: stored[name] for name in stored.files}
    for k in range(N_FOLDS):
        for layer in ("pooled", "dense"):
            x = rng.normal(size=(len(y), arrays["pooled_0"].shape[1])).astype(np.float32)
            x[:, :3] += 1.2 * y[:, None]
            arrays[f"{layer}_repeat1_{k}"] = x
    np.savez(out / "features.npz", **arrays)
    return tests


def test_two_repeats_are_searched_per_repeat_and_fold_without_leakage(workdir):
    root, tests0 = workdir
    tests1 = _add_second_repeat(root)
    log = root / "fits.log"
    run_svm(svm_params(), DATASET, BACKBONE, STRATEGY, estimator=recording_pipeline(log))
    n = sum(len(t) for t in tests0.values())
    with np.load(root / "runs/phantom/vgg16/15/mlp/features.npz") as stored:
        for fold, test in tests1.items():  # repeat 1's own folds, on repeat 1's own features
            assert fitted_rows(log, stored[f"pooled_repeat1_{fold}"]) == set(range(n)) - set(test)
        for fold, test in tests0.items():
            assert fitted_rows(log, stored[f"pooled_{fold}"]) == set(range(n)) - set(test)
    expected = [(r, k) for r in range(2) for k in range(N_FOLDS)]
    oof = pd.read_csv(root / "runs/phantom/vgg16/15/svm/oof.csv")
    assert list(oof.columns) == ["path", "group", "label", "y", "repeat", "fold", "C", "score"]
    assert len(oof) == 2 * n and oof["score"].notna().all()
    metrics = json.loads((root / "runs/phantom/vgg16/15/svm_metrics.json").read_text())
    assert [(f["repeat"], f["fold"]) for f in metrics["folds"]] == expected and len(metrics["chosen_c"]) == 6
    for (repeat, fold), c in zip(expected, metrics["chosen_c"]):
        assert oof.query("repeat == @repeat and fold == @fold")["C"].unique().tolist() == [c]
    searched = pd.read_csv(root / "runs/phantom/vgg16/15/svm/c_search.csv")
    assert list(searched.columns[:2]) == ["repeat", "fold"] and len(searched) == 4 * 6
    runs = _runs(root).query("fold != 'all'")
    assert sorted(zip(runs["repeat"].astype(int), runs["fold"].astype(int))) == expected
    # each fold's C on its fold run, none on the parent
    assert not any(column.startswith("param.chosen_c") for column in _runs(root).columns)
    chosen = {(int(r), int(k)): float(c) for r, k, c in zip(runs["repeat"], runs["fold"], runs["param.C"])}
    assert chosen == dict(zip(expected, metrics["chosen_c"]))


def test_a_missing_repeat_array_names_it(workdir):
    root, _ = workdir
    _add_second_repeat(root)
    path = root / "runs/phantom/vgg16/15/mlp/features.npz"
    with np.load(path) as stored:
        kept = {k: stored[k] for k in stored.files if k != "pooled_repeat1_2"}
    np.savez(path, **kept)
    with pytest.raises(DataError, match="no array 'pooled_repeat1_2' for svm.features=pooled, repeat 1, fold 2"):
        run_svm(svm_params(), DATASET, BACKBONE, STRATEGY)


# --- bad input ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, key", [
    ({"svm.c_grid": []}, "svm.c_grid"),
    ({"svm.c_grid": [1.0, 0.0]}, "svm.c_grid.1"),
    ({"svm.c_grid": [-1.0]}, "svm.c_grid.0"),
    ({"svm.optuna": {"n_trials": 0}}, "svm.optuna.n_trials"),
    ({"svm.optuna": {"c_min": 0.0}}, "svm.optuna.c_min"),
    ({"svm.optuna": {"c_min": 10.0, "c_max": 1.0}}, "svm.optuna"),
    ({"svm.search": "random"}, "svm.search"),
    ({"svm.features": "logits"}, "svm.features"),
    ({"svm.optuna": {"sampler": "tpe"}}, "svm.optuna.sampler"),
])
def test_bad_svm_params_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as error:
        svm_params(**overrides)
    message = str(error.value)
    assert message.startswith(f"params.yaml: {key}:") and "\n" not in message


def test_repo_params_and_paper_config_load():
    from sonotune.config import load_params, merged_params, parse_params

    paper = parse_params(merged_params(ROOT / "params.yaml", [ROOT / "configs" / "paper.yaml"]))
    for params in (load_params(ROOT / "params.yaml"), paper):
        assert params.svm.c_grid == [0.1, 1.0, 10.0, 100.0] and params.svm.search == "grid"
    assert tiny_params()["svm"]["optuna"]["storage"] is None


def test_missing_finetune_output_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="run the finetune stage first"):
        run_svm(svm_params(), DATASET, BACKBONE, STRATEGY)
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()  # nothing opened before the input was checked


def test_missing_feature_layer_names_the_array(workdir):
    root, _ = workdir
    path = root / "runs/phantom/vgg16/15/mlp/features.npz"
    with np.load(path) as stored:
        kept = {k: stored[k] for k in stored.files if not k.startswith("dense")}
    np.savez(path, **kept)
    with pytest.raises(DataError, match="no array 'dense_0'"):
        run_svm(svm_params(**{"svm.features": "dense"}), DATASET, BACKBONE, STRATEGY)


def test_cli_reports_a_bad_svm_key_in_one_line(tmp_path):
    params = tiny_params(**{"svm.optuna.n_trials": 0})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, "-m", "sonotune.cli", "svm", "--dataset", DATASET, "--backbone", BACKBONE,
                             "--strategy", str(STRATEGY)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sonotune svm: error: params.yaml: svm.optuna.n_trials: Input should be greater than or equal to 1 (got 0)"]
    assert not (tmp_path / "mlruns").exists()
