"""The report's one MLflow action: add the intervals (with the statistic they belong to, `auc_oof_mean`) and the
`single_class_folds` tag to the parent runs the `finetune` and `svm` stages created (found by their tags and
numbers; the report never creates a run). The interval is logged to 4 decimals (`INTERVAL_DECIMALS`), which
MLflow's runs table shows whole; reports/metrics.json keeps every digit."""

from __future__ import annotations

import math

import pandas as pd

from sonotune import tracking
from sonotune.config import Params
from sonotune.stages.report.write import log_figures

INTERVAL_DECIMALS = 4  # of the logged interval (reports/metrics.json keeps every digit)


def log_intervals(results: pd.DataFrame, params: Params) -> str:
    """Log the intervals onto the parent runs when `report.log_to_mlflow`; return the summary's MLflow line."""
    if params.report.log_to_mlflow:
        updated, missing = log_to_parent_runs(results, params)
        return f"MLflow: intervals added to {updated} parent runs" + (
            f"; {missing} configurations have no matching run" if missing else "") + "."
    return "MLflow: not updated (report.log_to_mlflow: false)."


def log_to_parent_runs(results: pd.DataFrame, params: Params) -> tuple[int, int]:
    """Add the intervals (and any missing mean metric or grid param) to each configuration's parent run.

    The parent is the newest finished run with the configuration's tags whose `auc_mean` equals the metrics
    file's, i.e. the run that produced these numbers. Returns (runs updated, configurations without a run).
    """
    import time

    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.configure())
    updated = missing = 0
    now = int(time.time() * 1000)
    for row in results.to_dict("records"):
        experiment = client.get_experiment_by_name(tracking.experiment_name(row["dataset"]))
        run = experiment and _producing_run(client, experiment.experiment_id, row, params.protocol)
        if not run:
            missing += 1
            continue
        mean_keys = [k for k in row if k.endswith(("_mean", "_sd"))]
        values = {k: row[k] for k in mean_keys if k not in run.data.metrics}
        # the interval's own statistic: equal to the stage's auc_mean except for the SVM under protocol paper;
        # 4 decimals (far below an interval's own precision) so MLflow's runs table shows them whole
        values |= {"auc_oof_mean": round(row["auc_mean"], INTERVAL_DECIMALS),
                   "auc_ci_low": round(row["auc_low"], INTERVAL_DECIMALS),
                   "auc_ci_high": round(row["auc_high"], INTERVAL_DECIMALS)}
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if not math.isnan(float(v))]
        # the compare view plots params, not tags: give it the grid's axes where the stage did not log them (runs
        # of an older sonotune)
        axes = tracking.configuration_params(row["backbone"], row["strategy"], row["classifier"])
        axes = {k: v for k, v in axes.items() if k not in run.data.params}
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in axes.items()])
        client.set_tag(run.info.run_id, "auc_ci", f"{round(100 * (1 - params.report.alpha))} % interval of "
                                                  f"auc_oof_mean: {_interval_name(params)}")
        client.set_tag(run.info.run_id, "single_class_folds", str(int(row["single_class_folds"])))
        log_figures(client, run.info.run_id, row["dataset"])
        updated += 1
    return updated, missing


def _interval_name(params: Params) -> str:
    cfg = params.report
    if cfg.interval == "bootstrap":
        return f"group bootstrap ({cfg.n_bootstrap} replicates)"
    return "clustered (Obuchowski) variance, logit scale, t reference"


def _producing_run(client, experiment_id: str, row: dict, protocol: str):
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in (
        ("dataset", row["dataset"]), ("backbone", row["backbone"]), ("strategy", row["strategy"]),
        ("classifier", row["classifier"]), ("protocol", protocol), ("fold", "all")))
    runs = client.search_runs([experiment_id], query + " and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    for run in runs:
        logged = run.data.metrics.get("auc_mean")
        if logged is not None and math.isclose(logged, row["auc_stage"], rel_tol=1e-9, abs_tol=1e-12):
            return run
    return None
