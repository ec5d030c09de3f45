"""Stage `report`: the study's tables, figures, statistics and the one-screen summary printed at the end of a run.

Run as `sonotune report` (the last stage of `dvc repro`). For every (dataset, backbone, strategy, classifier)
of params.yaml's `study` it reads the metrics JSON and out-of-fold predictions the `finetune` and `svm`
stages wrote, and writes under `reports/`:
- `table3.csv`/`.md`: AUC of the MLP head and of the SVM (out-of-fold), mean ± sd over folds and a 95 %
  interval of that mean — the paper's Table 3; `table3_paper_layout.md`: the same AUCs in the paper's layout
  (strategies × backbones) beside the paper's values (`paper_table3.csv`); `table4.csv`/`.md`: accuracy,
  precision, sensitivity, specificity, balanced accuracy, MCC MLP/SVM, folds called all one class, and the
  chosen C at `report.table4_strategy` — the paper's Table 4 and what it leaves out;
- `comparisons.csv`: every paired comparison (strategy A vs B per backbone and classifier, backbone A vs B per
  classifier and strategy, MLP vs SVM per configuration) with its p-value, its Holm-adjusted p-value over every
  comparison of the report, its equivalence test and its verdict (different / equivalent / inconclusive);
- `figures/`: `auc_by_strategy_<dataset>.png` (AUC against strategy per backbone, MLP and SVM, interval bands:
  the paper's question in one picture; also logged onto the dataset's parent MLflow runs),
  `auc_heatmap_<dataset>.png`, and for the two best backbones of each dataset `roc_<dataset>.png` (MLP vs SVM)
  and `confusion_<dataset>.png` (the paper's Figs 3–8);
- the two DVC plots `auc_by_strategy.csv` (strategy, AUC and interval, a line per dataset · backbone ·
  classifier) and `roc.csv` (every configuration's pooled ROC, the best named); `auc.json` (every
  configuration's AUC); `metrics.json` (the headline numbers, dvc.yaml's top-level metrics); `summary.md`
  (the printed summary less its MLflow lines, which name this machine's store); `index.html` (the study page:
  summary, Tables 3 and 4, every figure, links to the MLflow runs, in one self-contained file).
Intervals and tests come from `sonotune.stats` (docs/statistics.md). The intervals, and a `single_class_folds`
tag, are also logged onto the parent MLflow runs the stages created (found by their tags; the report never
creates a run).

One module per job: `load` (read the stages' outputs), `statistics` (intervals, paired tests, verdicts), `tables`
(Tables 3 and 4), `findings` (the summary, answer first), `wording` (every sentence of it), `figures`,
`mlflow_runs` (the parent runs), `write` (the files under `reports/`) and `page` (reports/index.html, which renders
the summary `findings` builds); `run_report` below only strings them together.
"""

from __future__ import annotations

import dataclasses

from sonotune.config import Params
from sonotune.stages.report.findings import best_per_backbone, mlflow_lines, summary_text
from sonotune.stages.report.load import load_study
from sonotune.stages.report.mlflow_runs import log_intervals
from sonotune.stages.report.page import write_page
from sonotune.stages.report.statistics import add_intervals, comparisons, variance_note
from sonotune.stages.report.tables import table3, table4, table4_strategy
from sonotune.stages.report.write import write_metrics, write_plots, write_summary, write_tables

__all__ = ["run_report"]


def run_report(params: Params) -> str:
    """Build every report file from the stages' outputs; return the one-screen summary with the MLflow lines
    (what was logged, how to browse the runs) that summary.md leaves out."""
    study = load_study(params)
    results = add_intervals(study, params)
    study = dataclasses.replace(study, results=results)
    tests = comparisons(study, params)
    table = table3(results, params.protocol)
    best = best_per_backbone(results)
    t4_strategy = table4_strategy(params)
    t4 = table4(study, t4_strategy)

    write_plots(study, results, best, tests, params)
    mlflow_note = log_intervals(results, params)
    write_tables(study, table, t4, t4_strategy, tests, params)
    write_metrics(results, tests)
    text = summary_text(params, results, table, best, tests, t4_strategy, t4, variance_note(study, params))
    write_summary(text)
    write_page(text, results, params)  # reports/index.html: the summary, tables and figures in one file
    return text + mlflow_lines(mlflow_note)
