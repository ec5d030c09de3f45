"""FT-SVM end to end: `dvc repro` of a one-configuration tiny study with the grid search, then
`dvc exp run -S svm.search=optuna`, which must rerun only the svm and report stages; checked through DVC
outputs, the Optuna storage and MLflow."""

import json
import sqlite3

import optuna
import pandas as pd
import pytest

from tests.workspace import copy_repo, run, tiny_params

pytestmark = pytest.mark.e2e

SVM_DIR = "runs/phantom/vgg16/0/svm"


def _svm_runs(repo) -> pd.DataFrame:
    with sqlite3.connect(repo / "mlruns" / "mlflow.db") as db:
        runs = pd.read_sql("select run_uuid, status from runs", db)
        tags = pd.read_sql("select run_uuid, key, value from tags", db)
        params = pd.read_sql("select run_uuid, key, value from params where key in ('svm.search', 'C')", db)
    wide = tags.pivot(index="run_uuid", columns="key", values="value").reset_index()
    wide = wide.merge(params.pivot(index="run_uuid", columns="key", values="value").reset_index(), how="left")
    return runs.merge(wide, on="run_uuid").query("classifier == 'svm'")


def test_grid_then_optuna_through_dvc(tmp_path):
    repo = copy_repo(tmp_path / "repo", tiny_params(**{"study.strategies": [0]}))
    out = run(["dvc", "repro"], repo).stdout
    assert "Running stage 'svm@phantom-vgg16-0'" in out
    grid = json.loads((repo / "runs/phantom/vgg16/0/svm_metrics.json").read_text())
    assert len(grid["folds"]) == 3 and set(grid["chosen_c"]) <= {0.1, 1.0, 10.0, 100.0}
    assert not (repo / SVM_DIR / "optuna.db").exists()

    exp = run(["dvc", "exp", "run", "-S", "svm.search=optuna", "-S", "svm.optuna.n_trials=3"], repo).stdout
    assert "Running stage 'svm@phantom-vgg16-0'" in exp and "Running stage 'report'" in exp
    assert "Running stage 'finetune" not in exp and "Running stage 'prepare" not in exp
    tuned = json.loads((repo / "runs/phantom/vgg16/0/svm_metrics.json").read_text())
    assert len(tuned["folds"]) == 3 and all(1e-4 <= c <= 100.0 for c in tuned["chosen_c"])
    storage = f"sqlite:///{repo / SVM_DIR / 'optuna.db'}"
    studies = optuna.get_all_study_summaries(storage)
    assert sorted(s.n_trials for s in studies) == [3, 3, 3]
    oof = pd.read_csv(repo / SVM_DIR / "oof.csv")
    assert len(oof) == 36 and oof["score"].notna().all()
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)  # {"": the workspace}
    assert "phantom" in next(iter(shown.values()))["data"]["reports/metrics.json"]["data"]  # the headline numbers

    runs = _svm_runs(repo)
    assert (runs["status"] == "FINISHED").all()
    parents = runs[runs["fold"] == "all"]
    assert sorted(parents["svm.search"]) == ["grid", "optuna"]
    optuna_parent = parents.loc[parents["svm.search"] == "optuna", "run_uuid"].item()
    folds = runs[runs["mlflow.parentRunId"] == optuna_parent]
    assert sorted(folds["fold"]) == ["0", "1", "2"]
    trials = runs[runs["optuna_trial"].notna()]
    assert len(trials) == 9 and set(trials["mlflow.parentRunId"]) == set(folds["run_uuid"])
    assert trials["C"].notna().all()
