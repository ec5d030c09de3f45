"""The paper's tables: Table 3 (AUC of the MLP head and of the SVM, mean ± sd and interval, per configuration)
and Table 4 (accuracy, precision, sensitivity MLP / SVM and the chosen C at one strategy), as frames and markdown."""

from __future__ import annotations

import pandas as pd

from sonotune.config import Params
from sonotune.stages.report.load import StudyResults
from sonotune.vocabulary import CLASSIFIERS, THRESHOLDS


def table3(results: pd.DataFrame) -> pd.DataFrame:
    """AUC mean, sd and interval per dataset × backbone × strategy, MLP and SVM side by side."""
    values = ["auc_mean", "auc_sd", "auc_low", "auc_high"]
    wide = results.pivot(index=["dataset", "backbone", "strategy"], columns="classifier", values=values)
    wide.columns = [f"{classifier}_{stat.replace('auc_mean', 'auc')}" for stat, classifier in wide.columns]
    order = [f"{c}_{v}" for c in CLASSIFIERS for v in ("auc", "auc_sd", "auc_low", "auc_high")]
    return _in_study_order(wide.reset_index()[["dataset", "backbone", "strategy", *order]], results)


def _in_study_order(table: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    keys = results[["dataset", "backbone", "strategy"]].drop_duplicates()
    return keys.merge(table, on=["dataset", "backbone", "strategy"]).reset_index(drop=True)


def _auc_cell(mean: float, sd: float, low: float, high: float) -> str:
    return f"{mean:.3f} ± {sd:.3f} [{low:.2f}, {high:.2f}]"


def table3_markdown(table: pd.DataFrame, alpha: float) -> str:
    level = round(100 * (1 - alpha))
    lines = ["| dataset | backbone | strategy | AUC MLP | AUC SVM |", "|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.dataset} | {row.backbone} | {row.strategy} % "
                     f"| {_auc_cell(row.mlp_auc, row.mlp_auc_sd, row.mlp_auc_low, row.mlp_auc_high)} "
                     f"| {_auc_cell(row.svm_auc, row.svm_auc_sd, row.svm_auc_low, row.svm_auc_high)} |")
    note = f"\nAUC: mean ± sd over folds [{level} % interval of the mean, group bootstrap].\n"
    return "\n".join(lines) + "\n" + note


def table4_strategy(params: Params) -> int:
    """`report.table4_strategy`, or the nearest strategy of the study when the study lacks it."""
    wanted = params.report.table4_strategy
    return min(params.study.strategies, key=lambda s: (abs(s - wanted), s))


def _format_c(values: list[float]) -> str:
    return ", ".join(f"{c:g}" for c in values) if values else "—"


def table4(study: StudyResults, strategy: int) -> pd.DataFrame:
    """Accuracy, precision, sensitivity (mean ± sd) MLP vs SVM and the C chosen per fold, at one strategy."""
    results = study.results[study.results["strategy"] == strategy]
    rows = []
    for (dataset, backbone), group in results.groupby(["dataset", "backbone"], sort=False):
        by = group.set_index("classifier")
        row = {"dataset": dataset, "backbone": backbone, "strategy": strategy}
        for metric, name in (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "sensitivity")):
            for classifier in CLASSIFIERS:
                row[f"{classifier}_{name}"] = by.loc[classifier, f"{metric}_mean"]
                row[f"{classifier}_{name}_sd"] = by.loc[classifier, f"{metric}_sd"]
        row["chosen_c"] = _format_c(study.chosen_c.get((dataset, backbone, strategy), []))
        rows.append(row)
    return pd.DataFrame(rows)


def table4_markdown(table: pd.DataFrame, strategy: int, wanted: int) -> str:
    lines = []
    if strategy != wanted:
        lines.append(f"report.table4_strategy is {wanted} %, which the study does not hold; showing {strategy} %.\n")
    lines += ["| dataset | backbone | accuracy MLP / SVM | precision MLP / SVM | sensitivity MLP / SVM | C per fold |",
              "|---|---|---|---|---|---|"]
    for row in table.to_dict("records"):
        cells = [f"{row[f'mlp_{m}']:.3f} / {row[f'svm_{m}']:.3f}" for m in ("accuracy", "precision", "sensitivity")]
        lines.append(f"| {row['dataset']} | {row['backbone']} | {' | '.join(cells)} | {row['chosen_c']} |")
    cut = f"MLP threshold {THRESHOLDS['mlp']:g}, SVM decision {THRESHOLDS['svm']:g}"
    return f"Strategy {strategy} %: fold means ({cut}).\n\n" + "\n".join(lines) + "\n"
