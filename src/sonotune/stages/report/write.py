"""The files the report writes under `reports/` (`sonotune.layout.REPORTS_ROOT`, the outputs dvc.yaml declares):
the figures and `roc_best.csv` (DVC plots), the tables (Table 3 also in the paper's layout beside the paper's
values), `comparisons.csv`, `metrics.json` (DVC metrics) and `summary.md`."""

from __future__ import annotations

import json

import pandas as pd

from sonotune.config import Params
from sonotune.layout import REPORTS_ROOT
from sonotune.stages.report.figures import (roc_best_points, save_auc_heatmap, save_confusion_grid,
                                            save_roc_overlay, two_best_backbones)
from sonotune.stages.report.load import StudyResults
from sonotune.stages.report.statistics import INTERVAL_NAMES, TEST_NAMES, too_few_groups
from sonotune.stages.report.tables import paper_table3, table3_markdown, table3_paper_layout, table4_markdown

FIGURES = REPORTS_ROOT / "figures"


def write_plots(study: StudyResults, results: pd.DataFrame, best: pd.DataFrame, tests: pd.DataFrame,
                params: Params) -> None:
    """`figures/` (rewritten whole: a dataset's heatmap, and ROC and confusion figures of its two best
    backbones) and `roc_best.csv`, the ROC of the best configuration."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    for old in FIGURES.glob("*.png"):
        old.unlink()
    for dataset, frame in study.predictions.items():
        picks = two_best_backbones(best, dataset)
        save_auc_heatmap(FIGURES / f"auc_heatmap_{dataset}.png", results, dataset, tests, params.report.alpha,
                         TEST_NAMES[params.report.paired_test])
        save_roc_overlay(FIGURES / f"roc_{dataset}.png", frame, results, picks, dataset)
        save_confusion_grid(FIGURES / f"confusion_{dataset}.png", frame, picks, dataset)
    top = results.loc[results["auc_mean"].idxmax()]
    roc_best_points(study.predictions[top.dataset], top.backbone, top.strategy).to_csv(
        REPORTS_ROOT / "roc_best.csv", index=False)


def write_tables(study: StudyResults, table: pd.DataFrame, t4: pd.DataFrame, t4_strategy: int,
                 tests: pd.DataFrame, params: Params) -> None:
    """`table3.csv`/`.md`, `table3_paper_layout.md`, `table4.csv`/`.md` and `comparisons.csv`."""
    table.to_csv(REPORTS_ROOT / "table3.csv", index=False, float_format="%.4f")
    no_interval = {dataset: reason for dataset, frame in study.predictions.items()
                   if (reason := too_few_groups(frame))}
    (REPORTS_ROOT / "table3.md").write_text(table3_markdown(table, params.report.alpha,
                                                            INTERVAL_NAMES[params.report.interval], no_interval))
    (REPORTS_ROOT / "table3_paper_layout.md").write_text(table3_paper_layout(table, paper_table3()))
    t4.to_csv(REPORTS_ROOT / "table4.csv", index=False, float_format="%.4f")
    (REPORTS_ROOT / "table4.md").write_text(table4_markdown(t4, t4_strategy, params.report.table4_strategy))
    tests.to_csv(REPORTS_ROOT / "comparisons.csv", index=False, float_format="%.4g")


def dvc_metrics(results: pd.DataFrame) -> dict:
    """Nested {dataset: {backbone: {strategy: {classifier: {auc, auc_sd, auc_low, auc_high}}}}}."""
    tree: dict = {}
    for row in results.itertuples():
        node = tree.setdefault(row.dataset, {}).setdefault(row.backbone, {}).setdefault(str(row.strategy), {})
        node[row.classifier] = {k: round(float(getattr(row, f)), 4) for k, f in
                                (("auc", "auc_mean"), ("auc_sd", "auc_sd"), ("auc_low", "auc_low"),
                                 ("auc_high", "auc_high"), ("accuracy", "accuracy_mean"))}
    return tree


def write_metrics(results: pd.DataFrame) -> None:
    """`metrics.json`: `dvc_metrics` of the results."""
    (REPORTS_ROOT / "metrics.json").write_text(json.dumps(dvc_metrics(results), indent=2) + "\n")


def write_summary(text: str) -> None:
    """`summary.md`: the one-screen summary, as `sonotune report` prints it."""
    (REPORTS_ROOT / "summary.md").write_text(text)
