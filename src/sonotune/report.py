"""Stage `report`: the study's comparison tables and the one-screen summary printed at the end of a run.

Run as `sonotune report`. Reads the metrics of every (dataset, backbone, strategy, classifier) the params
name and writes `reports/table3.csv` and `.md` (AUC mean ± sd over folds, MLP head vs SVM — the paper's
Table 3), `reports/summary.md` and `reports/metrics.json` (DVC metrics).
"""

from __future__ import annotations

import json
from itertools import product

import pandas as pd

from sonotune import tracking
from sonotune.config import Params
from sonotune.layout import REPORTS_ROOT, metrics_file

CLASSIFIERS = ("mlp", "svm")


def collect_results(params: Params) -> pd.DataFrame:
    """One row per configuration and classifier with the mean/sd metrics of its folds."""
    rows = []
    study = params.study
    for dataset, backbone, strategy, classifier in product(
        study.datasets, study.backbones, study.strategies, CLASSIFIERS
    ):
        metrics = json.loads(metrics_file(dataset, backbone, strategy, classifier).read_text())
        rows.append({"dataset": dataset, "backbone": backbone, "strategy": strategy, "classifier": classifier,
                     **metrics["mean"]})
    return pd.DataFrame(rows)


def table3(results: pd.DataFrame) -> pd.DataFrame:
    """AUC mean and sd per dataset × backbone × strategy, MLP and SVM side by side."""
    wide = results.pivot_table(
        index=["dataset", "backbone", "strategy"], columns="classifier", values=["auc_mean", "auc_sd"]
    )
    wide.columns = [f"{classifier}_{stat.removesuffix('_mean').replace('auc_sd', 'auc_sd')}"
                    for stat, classifier in wide.columns]
    return wide.reset_index()[["dataset", "backbone", "strategy", "mlp_auc", "mlp_auc_sd", "svm_auc", "svm_auc_sd"]]


def table3_markdown(table: pd.DataFrame) -> str:
    lines = ["| dataset | backbone | strategy | AUC MLP | AUC SVM |", "|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.dataset} | {row.backbone} | {row.strategy} % | {row.mlp_auc:.3f} ± {row.mlp_auc_sd:.3f}"
                     f" | {row.svm_auc:.3f} ± {row.svm_auc_sd:.3f} |")
    return "\n".join(lines) + "\n"


def summary_text(params: Params, table: pd.DataFrame) -> str:
    best = table.loc[table[["mlp_auc", "svm_auc"]].max(axis=1).idxmax()]
    best_classifier = "SVM" if best.svm_auc >= best.mlp_auc else "MLP"
    return (
        f"# sonotune study — protocol `{params.protocol}`, {params.cv.n_splits}-fold CV\n\n"
        f"AUC, mean ± sd over folds:\n\n{table3_markdown(table)}\n"
        f"Best: {best.dataset} / {best.backbone} at {best.strategy} % with the {best_classifier} head "
        f"(AUC {max(best.svm_auc, best.mlp_auc):.3f}).\n\n"
        f"Browse the runs: mlflow ui --backend-store-uri {tracking.tracking_uri()}\n"
    )


def run_report(params: Params) -> str:
    results = collect_results(params)
    table = table3(results)
    REPORTS_ROOT.mkdir(exist_ok=True)
    table.to_csv(REPORTS_ROOT / "table3.csv", index=False, float_format="%.4f")
    (REPORTS_ROOT / "table3.md").write_text(table3_markdown(table))
    text = summary_text(params, table)
    (REPORTS_ROOT / "summary.md").write_text(text)
    metrics = {
        f"{r.dataset}.{r.backbone}.{r.strategy}.{c}_auc": round(float(getattr(r, f"{c}_auc")), 4)
        for r in table.itertuples() for c in CLASSIFIERS
    }
    (REPORTS_ROOT / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return text
