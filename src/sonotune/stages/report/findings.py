"""The study's verdicts: the highest-AUC strategy per backbone against its runner-up, and the one-screen summary
(`summary.md`, printed at the end of `dvc repro`) that puts the answer first — its sentences all come from
`wording`, the one module that builds them."""

from __future__ import annotations

import pandas as pd

from sonotune import tracking
from sonotune.config import Params
from sonotune.stages.report import wording
from sonotune.stages.report.statistics import INTERVAL_NAMES, TEST_NAMES
from sonotune.stages.report.tables import table3_markdown

TABLE3_INLINE_ROWS = 12  # above this, the summary points to table3.md instead of repeating it


def best_per_backbone(results: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, backbone): the (strategy, classifier) with the highest fold-mean AUC — a point estimate;
    `wording.recommendation_lines` gives each other strategy's verdict against it."""
    rows = []
    for (dataset, backbone), group in results.groupby(["dataset", "backbone"], sort=False):
        best = group.loc[group["auc_mean"].idxmax()]
        rows.append({"dataset": dataset, "backbone": backbone, "strategy": best.strategy,
                     "classifier": best.classifier, "auc": best.auc_mean, "auc_low": best.auc_low,
                     "auc_high": best.auc_high})
    return pd.DataFrame(rows)


def summary_text(params: Params, results: pd.DataFrame, table: pd.DataFrame, best: pd.DataFrame,
                 tests: pd.DataFrame, t4_strategy: int, t4: pd.DataFrame, variance: str) -> str:
    """The one-screen summary as markdown: the answer to the paper's two questions first, then the one sentence,
    the tables and every comparison by kind."""
    cfg = params.report
    margin = cfg.equivalence_margin
    named = tests["test"].dropna().unique() if "test" in tests else []
    test_name = " / ".join(named) if len(named) else TEST_NAMES[cfg.paired_test]
    repeats = f" × {params.cv.repeats} repeats" if params.cv.repeats > 1 else ""
    lines = [f"# sonotune study — {', '.join(params.study.datasets)} · protocol `{params.protocol}` · "
             f"{params.cv.n_splits}-fold CV{repeats}", "",
             *wording.recommendation_lines(best, tests, cfg.alpha, margin), "",
             *wording.headline_lines(tests, cfg.alpha, margin), "", wording.starting_weights_line(params), ""]
    if len(table) <= TABLE3_INLINE_ROWS:
        lines += table3_markdown(table, cfg.alpha, INTERVAL_NAMES[cfg.interval]).splitlines()
    else:
        lines.append(f"Table 3 ({len(table)} rows): reports/table3.md")
    lines += ["", f"Every comparison by kind ({test_name}; {wording.correction_phrase(len(tests))}):"]
    lines += wording.comparison_lines(tests, margin)
    lines += ["", *wording.table4_lines(t4, t4_strategy)]
    lines += wording.single_class_lines(results)
    lines += ["", variance]
    lines += ["", wording.highest_auc_line(results.loc[results["auc_mean"].idxmax()]),
              f"Files: reports/table3.md, table3_paper_layout.md, table4.md ({t4_strategy} %), comparisons.csv, "
              "figures/ (auc_by_strategy_<dataset>.png: the study in one picture)."]
    return "\n".join(lines) + "\n"


def mlflow_lines(mlflow_note: str) -> str:
    """What the report logged to MLflow and how to browse the runs: printed, not written to summary.md (they
    name this machine's store)."""
    return f"{mlflow_note}\n{browse_line()}\n"


def browse_line() -> str:
    """How to see the runs: the local store through `mlflow ui`, or the team server's address (password masked)."""
    from sonotune import team

    uri = tracking.tracking_uri()
    if team.is_server(uri):
        return f"Browse the runs: {team.redact(uri)}"
    return f"Browse the runs: mlflow ui --backend-store-uri {uri}"
