"""outputs.py: the files a classifier stage leaves for DVC (folder, metrics JSON, ROC and confusion CSVs)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sonotune.layout import metrics_file, roc_file, stage_dir
from sonotune.outputs import confusion_file, roc_folds_file, write_plot_data, write_stage_outputs

CONFIG = ("toy", "vgg16", 15, "mlp")


@pytest.fixture
def oof(tmp_path, monkeypatch) -> pd.DataFrame:
    monkeypatch.chdir(tmp_path)
    stage_dir(*CONFIG).parent.mkdir(parents=True)
    y = np.array([0, 1] * 6)
    return pd.DataFrame({"path": [f"i{k}.png" for k in range(12)], "y": y, "fold": np.arange(12) % 3,
                         "score": np.linspace(0.1, 0.9, 12)})


def test_stage_outputs_hold_the_folder_the_metrics_and_the_roc(oof):
    write_stage_outputs(*CONFIG, oof, per_fold=[{"auc": 0.5}], summary={"auc_mean": 0.5, "auc_sd": 0.0},
                        arrays={"pooled_0": np.ones((12, 3))}, extra={"chosen_c": [1.0]})
    assert sorted(p.name for p in stage_dir(*CONFIG).iterdir()) == ["features.npz", "oof.csv"]
    metrics = json.loads(metrics_file(*CONFIG).read_text())
    assert metrics == {"mean": {"auc_mean": 0.5, "auc_sd": 0.0}, "folds": [{"auc": 0.5}], "chosen_c": [1.0]}
    assert list(pd.read_csv(roc_file(*CONFIG)).columns) == ["fpr", "tpr"]


def test_a_failed_write_leaves_the_previous_output_whole(oof, tmp_path):
    write_stage_outputs(*CONFIG, oof, per_fold=[], summary={"auc_mean": 0.5})
    before = metrics_file(*CONFIG).read_text()
    with pytest.raises(FileNotFoundError):
        write_stage_outputs(*CONFIG, oof.assign(score=0.0), per_fold=[], summary={"auc_mean": 0.9},
                            files={"c_search.csv": tmp_path / "never-written.csv"})
    assert metrics_file(*CONFIG).read_text() == before
    assert pd.read_csv(stage_dir(*CONFIG) / "oof.csv")["score"].tolist() == oof["score"].tolist()
    assert not list(stage_dir(*CONFIG).parent.glob(".*staging"))


def test_plot_data_has_a_curve_per_fold_and_pooled_and_named_classes(oof):
    write_plot_data(*CONFIG, oof, threshold=0.5)
    curves = pd.read_csv(roc_folds_file(*CONFIG), dtype={"fold": str})
    assert sorted(curves["fold"].unique()) == ["0", "1", "2", "pooled"]
    confusion = pd.read_csv(confusion_file(*CONFIG))
    assert len(confusion) == len(oof) and set(confusion["actual"]) == {"benign", "malignant"}
    assert (confusion["predicted"] == np.where(oof["score"] >= 0.5, "malignant", "benign")).all()
