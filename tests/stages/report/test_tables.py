"""Tables 3 and 4: imbalance-aware metrics and one-class folds in Table 4, the paper's Table 3 as data and our
numbers beside it in the paper's layout, and the printed AUC under protocol paper."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sonotune.stages.report import run_report
from sonotune.stages.report.tables import paper_table3, table3_paper_layout
from tests.stages.report.helpers import fake_study, report_params


def test_table4_and_summary_show_imbalance_and_name_one_class_classifiers(workdir):
    params = report_params(backbones=("vgg16",), strategies=(0, 15))
    fake_study(params, shift={("vgg16", 15, "mlp"): -20.0})  # the MLP calls every image benign
    text = run_report(params)
    t4 = pd.read_csv(workdir / "reports/table4.csv").iloc[0]
    mlp = json.loads((workdir / "runs/phantom/vgg16/15/mlp_metrics.json").read_text())
    for name, key in (("specificity", "specificity"), ("balanced_accuracy", "balanced_accuracy"), ("mcc", "mcc")):
        assert t4[f"mlp_{name}"] == pytest.approx(np.mean([f[key] for f in mlp["folds"]]), abs=1e-4)
    assert t4.mlp_single_class_folds == 3 and t4.svm_single_class_folds == 0
    assert t4.mlp_balanced_accuracy == pytest.approx(0.5) and t4.mlp_specificity == pytest.approx(1.0)
    md = (workdir / "reports/table4.md").read_text()
    assert "specificity MLP / SVM | balanced accuracy MLP / SVM | mcc MLP / SVM" in md
    assert "| phantom | vgg16 (MLP one class in 3 fold(s) †) |" in md
    line = next(l for l in text.splitlines() if l.startswith("One class only:"))
    assert "1 of 4 configurations" in line and "phantom / vgg16 15 % MLP (3 of 3 folds)" in line
    assert "balanced accuracy MLP / SVM" in text


def test_paper_table3_is_the_papers_numbers():
    paper = paper_table3().set_index(["dataset", "strategy", "backbone"])
    assert len(paper) == (7 * 3 + 3) * 5  # the text holds Salivary Glands at 0, 15 and 25 % only
    assert set(paper.index.get_level_values("dataset")) == {"mendeley", "busi", "ddti", "salivary"}
    spots = {("mendeley", 0, "resnet50"): (0.53, 0.70), ("mendeley", 100, "vgg19"): (0.97, 1.00),
             ("busi", 15, "inceptionv3"): (0.90, 0.99), ("busi", 100, "vgg16"): (0.64, 0.88),
             ("ddti", 15, "resnet50"): (0.59, 0.94), ("ddti", 100, "inceptionv3"): (0.51, 0.93),
             ("salivary", 25, "inceptionv3"): (0.74, 0.90)}
    for key, values in spots.items():
        assert tuple(paper.loc[key, ["mlp_auc", "svm_auc"]]) == values


def test_paper_layout_puts_the_papers_value_beside_ours_where_the_dataset_matches():
    table = pd.DataFrame({"dataset": ["busi", "busi", "phantom"], "backbone": ["resnet50", "resnet50", "vgg16"],
                          "strategy": [15, 50, 15], "mlp_auc": [0.8512, 0.7, 0.6], "svm_auc": [0.9, 0.75, 0.65]})
    paper = paper_table3()
    text = table3_paper_layout(table, paper[paper["strategy"] != 50])
    assert "## busi" in text and "## phantom" in text
    assert "| 15 % | (0.85, 0.90) · (0.87, 0.98) |" in text
    assert "| 50 % | (0.70, 0.75) · — |" in text  # the paper (as given) lacks that cell
    assert "| 15 % | (0.60, 0.65) · — |" in text


def test_report_writes_the_paper_layout(workdir):
    params = report_params(backbones=("vgg16",), strategies=(0, 15))
    fake_study(params)
    run_report(params)
    text = (workdir / "reports/table3_paper_layout.md").read_text()
    assert "IAPGOS 13(4)" in text and "| strategy | vgg16 |" in text and "| 15 % | (" in text


def test_under_protocol_paper_the_printed_svm_auc_is_the_one_its_interval_belongs_to(workdir):
    params = report_params(backbones=("vgg16",), strategies=(0,)).model_copy(update={"protocol": "paper"})
    fake_study(params)
    path = Path("runs/phantom/vgg16/0/svm_metrics.json")
    metrics = json.loads(path.read_text())
    oof_auc = metrics["mean"]["auc_mean"]
    metrics["mean"]["auc_mean"] = 0.99  # what the stage writes under paper: its inner-CV AUC
    path.write_text(json.dumps(metrics))
    run_report(params)
    row = pd.read_csv(workdir / "reports/table3.csv").iloc[0]
    assert row.svm_auc == pytest.approx(oof_auc, abs=1e-4) and row.svm_auc_inner_cv == pytest.approx(0.99)
    assert row.svm_auc_low <= row.svm_auc <= row.svm_auc_high < 0.99
    assert "svm_auc_inner_cv" in (workdir / "reports/table3.md").read_text()
