"""The report stage end to end on synthetic stage outputs: every file it writes, and a study too small to compare."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sonotune.stages.report import run_report
from tests.stages.report.helpers import fake_study, report_params


def test_tables_match_the_per_fold_metrics(workdir):
    params = report_params()
    fake_study(params)
    text = run_report(params)
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
    # 3 strategy pairs × 2 backbones × 2 classifiers, 1 backbone pair × 2 classifiers × 3 strategies, and MLP vs
    # SVM for the 6 configurations
    assert len(tests) == 12 + 6 + 6
    assert (tests["p_holm"] >= tests["p_value"] - 1e-12).all()

    auc = json.loads((reports / "auc.json").read_text())
    assert auc["phantom"]["vgg16"]["15"]["mlp"]["auc"] == pytest.approx(table.loc[1, "mlp_auc"], abs=1e-4)
    # the top-level DVC metrics: the headline numbers only (what `dvc exp show` must fit on a screen)
    headline = json.loads((reports / "metrics.json").read_text())
    assert headline == {"phantom": {"mlp_auc": pytest.approx(table["mlp_auc"].max(), abs=1e-4),
                                    "svm_auc": pytest.approx(table["svm_auc"].max(), abs=1e-4),
                                    "distinguishable": int((tests["p_holm"] < 0.05).sum()), "comparisons": 24}}
    for name in ("auc_by_strategy_phantom.png", "auc_heatmap_phantom.png", "roc_phantom.png",
                 "confusion_phantom.png"):
        assert (reports / "figures" / name).stat().st_size > 5000

    # the DVC plots: a line per backbone × classifier across strategies, one ROC per configuration
    lines = pd.read_csv(reports / "auc_by_strategy.csv")
    assert sorted(lines["config"].unique()) == ["phantom · resnet50 · MLP", "phantom · resnet50 · SVM",
                                                "phantom · vgg16 · MLP", "phantom · vgg16 · SVM"]
    assert all(list(s) == [0, 15, 50] for _, s in lines.groupby("config")["strategy"])
    vgg_svm = lines[(lines.config == "phantom · vgg16 · SVM") & (lines.strategy == 15)].iloc[0]
    assert vgg_svm.auc == pytest.approx(table.loc[1, "svm_auc"], abs=1e-4)
    assert vgg_svm.auc_low == pytest.approx(table.loc[1, "svm_auc_low"], abs=1e-4)
    roc = pd.read_csv(reports / "roc.csv")
    assert roc["config"].nunique() == 12 and len(roc) == 12 * 101
    best = roc.loc[roc["best"] == "yes", "config"].unique()
    top = max(((r.backbone, r.strategy, c, getattr(r, f"{c}_auc")) for r in table.itertuples()
               for c in ("mlp", "svm")), key=lambda t: t[3])
    # keyed by the configuration alone (`dvc plots diff` pairs revisions), its AUC beside it
    assert list(best) == [f"phantom · {top[0]} · {top[1]} % · {top[2].upper()}"]
    assert roc.loc[roc["best"] == "yes", "auc"].unique() == pytest.approx([top[3]], abs=1e-4)

    # summary.md is the printed summary less its MLflow lines, and names nothing of this machine
    summary = (reports / "summary.md").read_text()
    assert text.startswith(summary) and "MLflow: not updated" in text[len(summary):]
    assert "MLflow" not in summary and str(workdir) not in summary
    assert len(text.splitlines()) <= 40
    assert "Best: phantom / " in text and "- phantom / vgg16 — which strategy: " in text and "- phantom / resnet50 — which strategy: " in text


@pytest.mark.parametrize("test, interval", [("permutation", "clustered"), ("clustered_delong", "clustered"),
                                            ("delong", "bootstrap"), ("bootstrap", "bootstrap")])
def test_one_backbone_one_strategy_degrades_gracefully(workdir, test, interval):
    params = report_params(backbones=("vgg16",), strategies=(0,), paired_test=test, interval=interval)
    fake_study(params)
    text = run_report(params)
    assert "the study holds one strategy, no runner-up to compare" in text
    assert "table4.md (0 %)" in text
    assert "does not hold; showing 0 %" in (workdir / "reports" / "table4.md").read_text()
    assert len(pd.read_csv(workdir / "reports" / "comparisons.csv")) == 1  # MLP vs SVM only
    assert not pd.read_csv(workdir / "reports" / "table3.csv")[["mlp_auc_low", "svm_auc_high"]].isna().any(axis=None)
