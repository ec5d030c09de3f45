"""`sonotune pretrain` as a user runs it (real Keras at 32 px, real MLflow SQLite store): the weights file and its
report, the MLflow run, and one clear line for each bad input with nothing written."""

import json
import sqlite3

import pytest
import yaml

from sonotune.config import parse_params
from sonotune.errors import ConfigError
from tests.workspace import PRETRAINED, ROOT, copy_repo, run, tiny_params


def _tiny(**overrides):
    return tiny_params(**{"pretrain.input_size": 32} | overrides)


@pytest.fixture
def repo(tmp_path):
    return copy_repo(tmp_path / "repo", _tiny())


def _mlflow_runs(repo):
    db = repo / "mlruns" / "mlflow.db"
    if not db.is_file():
        return []
    with sqlite3.connect(db) as con:
        return con.execute("select r.name, r.status, e.name from runs r join experiments e "
                           "on r.experiment_id = e.experiment_id").fetchall()


def test_pretrain_writes_weights_report_and_one_finished_run(repo):
    out = run(["sonotune", "pretrain", "--backbone", "vgg16"], repo).stdout
    assert "pretrained vgg16 on 16 source phantom images at 32 px: held-out source AUC" in out
    assert (repo / "prepared/pretrain/vgg16.weights.h5").stat().st_size > 1_000_000
    report = json.loads((repo / "prepared/pretrain/vgg16.json").read_text())
    assert report["n_images"] == 16 and report["input_size"] == 32 and report["epochs"] == 1
    assert len(report["history"]["val_auc"]) == 1 and 0 <= report["best_source_val_auc"] <= 1
    assert "seconds" not in report  # wall-clock time is MLflow's: the DVC-tracked file is the same on any machine
    assert not [p.name for p in (repo / "prepared/pretrain").iterdir() if p.name.startswith(".")]
    assert _mlflow_runs(repo) == [("vgg16-pretrain", "FINISHED", "sonotune-pretrain")]


def test_an_unknown_backbone_is_one_line_and_nothing_is_written(repo):
    result = run(["sonotune", "pretrain", "--backbone", "vgg17"], repo, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sonotune pretrain: error: unknown backbone 'vgg17' (valid: inceptionv3, resnet101, resnet50, vgg16, vgg19)"]
    assert not (repo / "prepared" / "pretrain").exists() and _mlflow_runs(repo) == []


def test_a_bad_pretrain_key_is_one_line(tmp_path):
    params = _tiny()
    params["pretrain"]["n_imgs"] = 10
    repo = copy_repo(tmp_path / "repo", params)
    result = run(["sonotune", "pretrain", "--backbone", "vgg16"], repo, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == "sonotune pretrain: error: params.yaml: pretrain.n_imgs: unknown key"


def test_finetune_names_the_missing_pretrained_backbone(tmp_path):
    """The demo's finetune.weights before the pretrain stage ran: one line saying which file and what makes it."""
    repo = copy_repo(tmp_path / "repo", _tiny(**{"finetune.weights": PRETRAINED}))
    run(["sonotune", "prepare", "--dataset", "phantom"], repo)
    result = run(["sonotune", "finetune", "--dataset", "phantom", "--backbone", "vgg16", "--strategy", "0"], repo,
                 check=False)
    assert result.returncode == 2
    # (TensorFlow's start-up lines may come first: silencing them is another change's job)
    assert result.stderr.strip().splitlines()[-1] == ("sonotune finetune: error: finetune.weights: weights file "
                                     "prepared/pretrain/vgg16.weights.h5 not found (made by `sonotune pretrain`, "
                                     "dvc.yaml's pretrain stage)")


def test_the_pretrain_folder_name_is_reserved_for_datasets():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["datasets"]["pretrain"] = raw["datasets"]["phantom"]
    with pytest.raises(ConfigError, match=r"datasets\.pretrain: the name is reserved"):
        parse_params(raw)


def test_the_demo_pretrains_every_backbone_of_the_study_before_finetune():
    """params.yaml (the demo) starts finetune from the pretrain stage, which dvc.yaml runs per backbone first."""
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert params.finetune.weights == PRETRAINED
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["pretrain"]["foreach"] == "${study.backbones}"
    # the weights and the stage's report are outputs (the report is no top-level metric: exp show stays headline)
    assert stages["pretrain"]["do"]["outs"] == ["prepared/pretrain/${item}.weights.h5", "prepared/pretrain/${item}.json"]
    assert "metrics" not in stages["pretrain"]["do"]
    assert "prepared/pretrain/${item.backbone}.weights.h5" in stages["finetune"]["deps"]


def test_zero_epochs_saves_the_seeded_random_initialisation(tmp_path):
    repo = copy_repo(tmp_path / "repo", _tiny(**{"pretrain.epochs": 0}))
    out = run(["sonotune", "pretrain", "--backbone", "vgg16"], repo).stdout
    assert "saved the untrained vgg16 at 32 px (pretrain.epochs: 0)" in out
    report = json.loads((repo / "prepared/pretrain/vgg16.json").read_text())
    assert report["n_images"] == 0 and report["best_source_val_auc"] is None and report["history"] == {}
    assert (repo / "prepared/pretrain/vgg16.weights.h5").is_file()
