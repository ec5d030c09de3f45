"""The paper's tables: Table 3 (AUC of the MLP head and of the SVM, mean ± sd and interval, per configuration),
the same numbers in the paper's own layout beside the paper's values (`paper_table3.csv`), and Table 4
(accuracy, precision, sensitivity — and the imbalance-aware specificity, balanced accuracy and MCC — MLP / SVM
and the chosen C at one strategy), as frames and markdown."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sonotune.config import Params
from sonotune.stages.report.load import StudyResults
from sonotune.vocabulary import CLASSIFIERS, THRESHOLDS

PAPER_TABLE3 = Path(__file__).with_name("paper_table3.csv")
PAPER_CITATION = ("Bal-Ghaoui et al. (2023), Optimizing ultrasound image classification through transfer "
                  "learning, IAPGOS 13(4), Table 3")
TABLE4_METRICS = (("accuracy", "accuracy"), ("precision", "precision"), ("recall", "sensitivity"),
                  ("specificity", "specificity"), ("balanced_accuracy", "balanced_accuracy"), ("mcc", "mcc"))


def table3(results: pd.DataFrame, protocol: str = "leakage_free") -> pd.DataFrame:
    """AUC mean, sd and interval per dataset × backbone × strategy, MLP and SVM side by side; under `paper` also
    the SVM stage's inner-CV AUC (`svm_auc_inner_cv`, the paper's statistic, printed without an interval)."""
    values = ["auc_mean", "auc_sd", "auc_low", "auc_high", "auc_stage"]
    wide = results.pivot(index=["dataset", "backbone", "strategy"], columns="classifier", values=values)
    wide.columns = [f"{classifier}_{stat.replace('auc_mean', 'auc')}" for stat, classifier in wide.columns]
    order = [f"{c}_{v}" for c in CLASSIFIERS for v in ("auc", "auc_sd", "auc_low", "auc_high")]
    table = wide.reset_index()
    if protocol == "paper":
        table = table.rename(columns={"svm_auc_stage": "svm_auc_inner_cv"})
        order.append("svm_auc_inner_cv")
    return _in_study_order(table[["dataset", "backbone", "strategy", *order]], results)


def _in_study_order(table: pd.DataFrame, results: pd.DataFrame) -> pd.DataFrame:
    keys = results[["dataset", "backbone", "strategy"]].drop_duplicates()
    return keys.merge(table, on=["dataset", "backbone", "strategy"]).reset_index(drop=True)


def _auc_cell(mean: float, sd: float, low: float, high: float) -> str:
    interval = "[n/a]" if np.isnan(low) else f"[{low:.2f}, {high:.2f}]"
    return f"{mean:.3f} ± {sd:.3f} {interval}"


def table3_markdown(table: pd.DataFrame, alpha: float, interval_name: str = "clustered",
                    no_interval: dict[str, str] | None = None) -> str:
    level = round(100 * (1 - alpha))
    lines = ["| dataset | backbone | strategy | AUC MLP | AUC SVM |", "|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.dataset} | {row.backbone} | {row.strategy} % "
                     f"| {_auc_cell(row.mlp_auc, row.mlp_auc_sd, row.mlp_auc_low, row.mlp_auc_high)} "
                     f"| {_auc_cell(row.svm_auc, row.svm_auc_sd, row.svm_auc_low, row.svm_auc_high)} |")
    note = (f"\nAUC of the out-of-fold scores: mean ± sd over folds [{level} % interval of the mean, "
            f"{interval_name}; docs/statistics.md].\n")
    if "svm_auc_inner_cv" in table.columns:
        note += ("protocol paper: the SVM's AUC above is its out-of-fold AUC (each image scored once), the number "
                 "the interval belongs to; the stage's inner-CV AUC, the paper's statistic (selection bias "
                 "included), is table3.csv `svm_auc_inner_cv`, without an interval.\n")
    for dataset, reason in (no_interval or {}).items():
        note += f"{dataset}: no interval ({reason}).\n"
    return "\n".join(lines) + "\n" + note


def paper_table3() -> pd.DataFrame:
    """The paper's Table 3 (dataset, strategy, backbone, mlp_auc, svm_auc)."""
    return pd.read_csv(PAPER_TABLE3, comment="#")


def _pair(mlp: float, svm: float) -> str:
    return f"({mlp:.2f}, {svm:.2f})"


def table3_paper_layout(table: pd.DataFrame, paper: pd.DataFrame) -> str:
    """Per dataset: strategies as rows, backbones as columns, cells (MLP, SVM) AUC — ours, and the paper's beside
    it wherever the paper has that dataset, strategy and backbone."""
    paper = paper.set_index(["dataset", "strategy", "backbone"])
    blocks = [f"# Table 3 in the paper's layout: AUC (MLP, SVM), ours · paper\n\nPaper: {PAPER_CITATION}. Ours: "
              "the fold-mean out-of-fold AUCs of table3.md (intervals there); `—` where the paper has no value.\n"]
    for dataset, part in table.groupby("dataset", sort=False):
        backbones = list(dict.fromkeys(part["backbone"]))
        cells = part.set_index(["strategy", "backbone"])
        lines = [f"## {dataset}", "", "| strategy | " + " | ".join(backbones) + " |",
                 "|---|" + "---|" * len(backbones)]
        for strategy in sorted(set(part["strategy"])):
            row = []
            for backbone in backbones:
                ours = cells.loc[(strategy, backbone)]
                text = _pair(ours.mlp_auc, ours.svm_auc)
                key = (dataset, strategy, backbone)
                row.append(f"{text} · {_pair(*paper.loc[key, ['mlp_auc', 'svm_auc']])}" if key in paper.index
                           else f"{text} · —")
            lines.append(f"| {strategy} % | " + " | ".join(row) + " |")
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def table4_strategy(params: Params) -> int:
    """`report.table4_strategy`, or the nearest strategy of the study when the study lacks it."""
    wanted = params.report.table4_strategy
    return min(params.study.strategies, key=lambda s: (abs(s - wanted), s))


def _format_c(values: list[float]) -> str:
    return ", ".join(f"{c:g}" for c in values) if values else "—"


def table4(study: StudyResults, strategy: int) -> pd.DataFrame:
    """Accuracy, precision, sensitivity, specificity, balanced accuracy, MCC (fold mean ± sd) MLP vs SVM, the
    folds in which each called every image one class, and the C chosen per fold, at one strategy."""
    results = study.results[study.results["strategy"] == strategy]
    rows = []
    for (dataset, backbone), group in results.groupby(["dataset", "backbone"], sort=False):
        by = group.set_index("classifier")
        row = {"dataset": dataset, "backbone": backbone, "strategy": strategy}
        for metric, name in TABLE4_METRICS:
            for classifier in CLASSIFIERS:
                row[f"{classifier}_{name}"] = by.loc[classifier, f"{metric}_mean"]
                row[f"{classifier}_{name}_sd"] = by.loc[classifier, f"{metric}_sd"]
        for classifier in CLASSIFIERS:
            row[f"{classifier}_single_class_folds"] = int(by.loc[classifier, "single_class_folds"])
        row["chosen_c"] = _format_c(study.chosen_c.get((dataset, backbone, strategy), []))
        rows.append(row)
    return pd.DataFrame(rows)


def table4_markdown(table: pd.DataFrame, strategy: int, wanted: int) -> str:
    lines = []
    if strategy != wanted:
        lines.append(f"report.table4_strategy is {wanted} %, which the study does not hold; showing {strategy} %.\n")
    lines += table4_rows(table)
    cut = f"MLP threshold {THRESHOLDS['mlp']:g}, SVM decision {THRESHOLDS['svm']:g}"
    return (f"Strategy {strategy} %: fold means ({cut}). Balanced accuracy and MCC stay at 0.5 and 0 for a "
            "classifier that calls everything one class, whatever the prevalence; † = folds where it did.\n\n"
            + "\n".join(lines) + "\n")


def table4_rows(table: pd.DataFrame) -> list[str]:
    """Table 4 as markdown rows (header included)."""
    names = [name for _, name in TABLE4_METRICS]
    lines = ["| dataset | backbone | " + " | ".join(f"{n.replace('_', ' ')} MLP / SVM" for n in names)
             + " | C per fold |", "|---|---|" + "---|" * (len(names) + 1)]
    for row in table.to_dict("records"):
        cells = [f"{row[f'mlp_{m}']:.3f} / {row[f'svm_{m}']:.3f}" for m in names]
        flags = [f"{c.upper()} one class in {row[f'{c}_single_class_folds']} fold(s) †" for c in CLASSIFIERS
                 if row[f"{c}_single_class_folds"]]
        backbone = row["backbone"] + (f" ({'; '.join(flags)})" if flags else "")
        lines.append(f"| {row['dataset']} | {backbone} | {' | '.join(cells)} | {row['chosen_c']} |")
    return lines
