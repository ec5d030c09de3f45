"""End to end: real `dvc repro` of a tiny study in a throw-away git repo, checked through DVC and MLflow."""

import json
import sqlite3

import pandas as pd
import pytest

from tests.workspace import ROOT, project_env, run

pytestmark = pytest.mark.e2e

CONFIGS = [("vgg16", 0), ("vgg16", 15)]


def _runs(repo):
    with sqlite3.connect(repo / "mlruns" / "mlflow.db") as db:
        runs = pd.read_sql("select run_uuid, status, experiment_id from runs", db)
        tags = pd.read_sql("select run_uuid, key, value from tags", db)
        experiments = pd.read_sql("select experiment_id, name from experiments", db)
    wide = tags.pivot(index="run_uuid", columns="key", values="value").reset_index()
    return runs.merge(wide, on="run_uuid").merge(experiments, on="experiment_id")


def test_dvc_repro_tiny_study(demo_repro):
    """The demo's shape: the pretrain stage's backbone is what finetune starts from."""
    tiny_repo, out = demo_repro["repo"], demo_repro["out"]
    assert "Best: phantom / vgg16" in out and "mlflow ui --backend-store-uri sqlite:///" in out
    assert "Running stage 'pretrain@vgg16'" in out and out.index("pretrain@vgg16") < out.index("finetune@")
    assert (tiny_repo / "prepared/pretrain/vgg16.weights.h5").is_file()
    assert json.loads((tiny_repo / "prepared/pretrain/vgg16.json").read_text())["n_images"] == 16

    # DVC: metrics of every configuration, ROC plots, report
    for backbone, strategy in CONFIGS:
        for classifier in ("mlp", "svm"):
            metrics = json.loads((tiny_repo / f"runs/phantom/{backbone}/{strategy}/{classifier}_metrics.json").read_text())
            assert len(metrics["folds"]) == 3 and 0.0 <= metrics["mean"]["auc_mean"] <= 1.0
    # the top-level metrics are the headline numbers only; the per-configuration files are outputs
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], tiny_repo).stdout)
    files = {path for rev in shown.values() for path in rev["data"]}
    assert files == {"reports/metrics.json"}
    headline = json.loads((tiny_repo / "reports" / "metrics.json").read_text())
    assert set(headline["phantom"]) == {"mlp_auc", "svm_auc", "distinguishable", "comparisons"}
    # the summary's answer quotes AUCs the reports hold, by the check the README is held to (test_readme_numbers)
    from tests.test_readme_numbers import answer_block, auc_sentences, quoted_aucs_missing

    quoted = auc_sentences(answer_block((tiny_repo / "reports/summary.md").read_text()))
    assert quoted and quoted_aucs_missing(quoted, tiny_repo / "reports") == [], quoted
    assert quoted_aucs_missing("AUC 0.001", tiny_repo / "reports") == ["0.001"]
    # two plots across configurations (whatever the grid's size), then the report's figures
    plots = json.loads(run(["dvc", "plots", "show", "--json", "--split"], tiny_repo).stdout)["data"]
    assert [name for name in plots if not name.endswith(".png")] == [
        "AUC against the fine-tuning strategy", "ROC of every configuration (pooled out-of-fold; the best named)"]
    assert "reports/figures/auc_by_strategy_phantom.png" in plots
    table = pd.read_csv(tiny_repo / "reports" / "table3.csv")
    assert len(table) == len(CONFIGS)
    mlp = json.loads((tiny_repo / "runs/phantom/vgg16/15/mlp_metrics.json").read_text())["mean"]["auc_mean"]
    assert table.loc[table.strategy == 15, "mlp_auc"].item() == pytest.approx(mlp, abs=1e-4)
    oof = pd.read_csv(tiny_repo / "runs/phantom/vgg16/0/mlp/oof.csv")
    assert len(oof) == 36 and oof["fold"].between(0, 2).all() and oof["score"].between(0, 1).all()

    # MLflow: one experiment, a parent per (backbone, strategy, classifier), a child per fold, all tagged
    runs = _runs(tiny_repo)
    assert set(runs["name"]) == {"sonotune-phantom", "sonotune-pretrain"}
    assert (runs["status"] == "FINISHED").all()
    assert runs.loc[runs["name"] == "sonotune-pretrain", "backbone"].tolist() == ["vgg16"]
    runs = runs[runs["name"] == "sonotune-phantom"]
    parents = runs[runs["fold"] == "all"]
    assert len(parents) == 4
    assert sorted(zip(parents.backbone, parents.strategy, parents.classifier)) == sorted(
        (b, str(s), c) for b, s in CONFIGS for c in ("mlp", "svm"))
    children = runs[runs["fold"] != "all"]
    assert len(children) == 12
    assert set(children["mlflow.parentRunId"]) == set(parents["run_uuid"])
    for tag in ("dataset", "backbone", "strategy", "classifier", "fold", "protocol", "git_commit", "dvc_exp"):
        assert runs[tag].notna().all(), tag
    assert (runs["protocol"] == "leakage_free").all()
    artifacts = list((tiny_repo / "mlruns" / "artifacts").rglob("*.png"))
    assert any(p.name == "roc.png" for p in artifacts) and any(p.name == "confusion_matrix.png" for p in artifacts)
    # the study page: a DVC output of the report, logged onto every parent run; the experiment opens as model
    # training, with the parent runs' saved view the report's line links
    assert (tiny_repo / "reports" / "index.html").is_file()
    pages = list((tiny_repo / "mlruns" / "artifacts").rglob("report/index.html"))
    assert len(pages) == 4, pages
    with sqlite3.connect(tiny_repo / "mlruns" / "mlflow.db") as db:
        experiment_tags = dict(db.execute(
            "select key, value from experiment_tags join experiments using (experiment_id) "
            "where name = 'sonotune-phantom'").fetchall())
    assert experiment_tags["mlflow.experimentKind"] == "custom_model_development"
    assert "mlflow.sharedViewState.parent-runs" in experiment_tags
    assert "/runs?viewStateShareKey=parent-runs" in out

    # a second repro is a no-op
    again = run(["dvc", "repro"], tiny_repo).stdout
    assert "Running stage" not in again

    # the baseline `make demo` commits, then an experiment: changing a finetune param reruns finetune, svm and
    # report, not prepare
    run(["git", "add", "dvc.lock"], tiny_repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm", "baseline"], tiny_repo)
    exp = run(["dvc", "exp", "run", "-S", "finetune.learning_rate=0.0005"], tiny_repo).stdout
    assert "Running stage 'finetune@phantom-vgg16-0'" in exp and "Running stage 'finetune@phantom-vgg16-15'" in exp
    assert "Running stage 'prepare" not in exp and "Running stage 'pretrain" not in exp

    # the README's `dvc exp show` line: the experiment against the baseline, both headline AUCs (changed or not)
    # and the changed param, within 100 columns however wide the terminal
    line = next(l for l in (ROOT / "README.md").read_text().splitlines() if l.startswith("dvc exp show"))
    table = run(["bash", "-c", line.split("  #")[0]], tiny_repo, env=project_env(COLUMNS="400")).stdout
    width = max(len(row.rstrip()) for row in table.splitlines())
    assert width <= 100 and "finetune.learning_rate" in table, table
    assert "phantom.mlp_auc" in table and "phantom.svm_auc" in table, table
    assert "0.0005" in table and "workspace" in table
    diff = run(["dvc", "exp", "diff"], tiny_repo).stdout
    assert "finetune.learning_rate" in diff and "0.001" in diff and "0.0005" in diff
