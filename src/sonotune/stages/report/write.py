"""The files the report writes under `reports/` (`sonotune.layout.REPORTS_ROOT`, the outputs dvc.yaml declares):
the figures, `auc_by_strategy.csv` and `roc.csv` (the study's two DVC plots), the tables (Table 3 also in the
paper's layout beside the paper's values), `comparisons.csv`, `auc.json` (every configuration's AUC),
`metrics.json` (the headline numbers: dvc.yaml's top-level metrics) and `summary.md` (nothing machine-specific:
it is versioned with the experiment)."""

from __future__ import annotations

import json

import pandas as pd

from sonotune.config import Params
from sonotune.layout import REPORTS_ROOT
from sonotune.stages.report.figures import (
    auc_by_strategy_rows,
    roc_rows,
    save_auc_by_strategy,
    save_auc_heatmap,
    save_confusion_grid,
    save_roc_overlay,
    two_best_backbones,
)
from sonotune.stages.report.load import StudyResults
from sonotune.stages.report.statistics import INTERVAL_NAMES, TEST_NAMES, too_few_groups
from sonotune.stages.report.tables import (
    paper_table3,
    table3_markdown,
    table3_paper_layout,
    table4_markdown,
)
from sonotune.vocabulary import CLASSIFIERS

FIGURES = REPORTS_ROOT / "figures"


def cross_strategy_figure(dataset: str):
    """The figure of AUC against strategy per backbone, MLP and SVM, of one dataset."""
    return FIGURES / f"auc_by_strategy_{dataset}.png"


def write_plots(study: StudyResults, results: pd.DataFrame, best: pd.DataFrame, tests: pd.DataFrame,
                params: Params) -> None:
    """`figures/` (rewritten whole: per dataset the cross-strategy figure, the heatmap, and ROC and confusion
    figures of its two best backbones), `auc_by_strategy.csv` and `roc.csv` (the DVC plots)."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    for old in FIGURES.glob("*.png"):
        old.unlink()
    for dataset, frame in study.predictions.items():
        picks = two_best_backbones(best, dataset)
        save_auc_by_strategy(cross_strategy_figure(dataset), results, dataset, params.report.alpha,
                             INTERVAL_NAMES[params.report.interval])
        save_auc_heatmap(FIGURES / f"auc_heatmap_{dataset}.png", results, dataset, tests, params.report.alpha,
                         TEST_NAMES[params.report.paired_test])
        save_roc_overlay(FIGURES / f"roc_{dataset}.png", frame, results, picks, dataset)
        save_confusion_grid(FIGURES / f"confusion_{dataset}.png", frame, picks, dataset)
    auc_by_strategy_rows(results).to_csv(REPORTS_ROOT / "auc_by_strategy.csv", index=False)
    roc_rows(study.predictions, results).to_csv(REPORTS_ROOT / "roc.csv", index=False)


def log_figures(client, run_id: str, dataset: str) -> None:
    """Attach the dataset's cross-strategy figure to one of its parent runs (under `report/`): the report adds to
    the runs the stages created and never creates one, so each parent carries the study-wide picture."""
    client.log_artifact(run_id, str(cross_strategy_figure(dataset)), artifact_path="report")


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


def auc_tree(results: pd.DataFrame) -> dict:
    """Nested {dataset: {backbone: {strategy: {classifier: {auc, auc_sd, auc_low, auc_high, accuracy}}}}}."""
    tree: dict = {}
    for row in results.itertuples():
        node = tree.setdefault(row.dataset, {}).setdefault(row.backbone, {}).setdefault(str(row.strategy), {})
        node[row.classifier] = {k: round(float(getattr(row, f)), 4) for k, f in
                                (("auc", "auc_mean"), ("auc_sd", "auc_sd"), ("auc_low", "auc_low"),
                                 ("auc_high", "auc_high"), ("accuracy", "accuracy_mean"))}
    return tree


def headline_metrics(results: pd.DataFrame, tests: pd.DataFrame) -> dict:
    """Per dataset: the best configuration's fold-mean AUC with each classifier (`mlp_auc`, `svm_auc`) and how
    many paired comparisons are *different* (`distinguishable`: Holm over every comparison of the report, the
    `tests` frame's column — the same claim as the summary's) of its `comparisons`: the columns `dvc exp show`
    and `dvc exp diff` compare experiments on."""
    headline = {}
    for dataset, group in results.groupby("dataset", sort=False):
        paired = tests[tests["dataset"] == dataset]
        entry = {f"{c}_auc": round(float(group.loc[group["classifier"] == c, "auc_mean"].max()), 4)
                 for c in CLASSIFIERS}
        headline[dataset] = entry | {"distinguishable": int(paired["distinguishable"].sum()),
                                     "comparisons": len(paired)}
    return headline


def write_metrics(results: pd.DataFrame, tests: pd.DataFrame) -> None:
    """`auc.json` (`auc_tree`) and `metrics.json` (`headline_metrics`)."""
    (REPORTS_ROOT / "auc.json").write_text(json.dumps(auc_tree(results), indent=2) + "\n")
    (REPORTS_ROOT / "metrics.json").write_text(json.dumps(headline_metrics(results, tests), indent=2) + "\n")


def write_summary(text: str) -> None:
    """`summary.md`: the one-screen summary, as `sonotune report` prints it."""
    (REPORTS_ROOT / "summary.md").write_text(text)
