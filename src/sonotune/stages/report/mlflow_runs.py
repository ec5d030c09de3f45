"""The report's MLflow actions: add the intervals and the `single_class_folds` tag to the parent runs the
`finetune` and `svm` stages created, and log the study page onto them (`log_page`) (found by their tags and numbers; the report never creates a run). The
interval belongs to the stage's `auc_mean`, except for the SVM under protocol paper, whose interval is of the mean
over the outer folds' out-of-fold AUC: that other statistic is logged as `auc_oof_mean` (one name per meaning) and
the tag `auc_ci` names which one the interval is of. The summary's MLflow line links the runs table opened on the
parent runs (`tracking.runs_table_url`). The interval is logged to 4 decimals (`INTERVAL_DECIMALS`), which
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
            f"; {missing} configurations have no matching run" if missing else "") + "." + "".join(
            f"\nParent runs of {dataset} (configuration and AUC columns, best first): {url}"
            for dataset, url in parent_table_urls(results).items())
    return "MLflow: not updated (report.log_to_mlflow: false)."


def ui_address() -> str:
    """Where MLflow's UI answers: the team server, else `mlflow ui`'s default address."""
    from sonotune import team

    uri = tracking.tracking_uri()
    return team.redact(uri) if team.is_server(uri) else "http://127.0.0.1:5000"


def parent_table_urls(results: pd.DataFrame) -> dict[str, str]:
    """Per dataset with an experiment, the link to its runs table opened on the parent runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.configure())
    urls = {}
    for dataset in sorted(results["dataset"].unique()):
        experiment = client.get_experiment_by_name(tracking.experiment_name(dataset))
        if experiment is not None:
            urls[dataset] = tracking.runs_table_url(ui_address(), experiment.experiment_id)
    return urls


def producing_runs(client, results: pd.DataFrame, protocol: str):
    """(row, parent run) for each configuration of `results`, the run None where none produced its numbers."""
    for row in results.to_dict("records"):
        experiment = client.get_experiment_by_name(tracking.experiment_name(row["dataset"]))
        yield row, experiment and _producing_run(client, experiment.experiment_id, row, protocol)


def log_page(results: pd.DataFrame, params: Params, page) -> None:
    """The study page onto every parent run that produced the report's numbers, under `report/`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking.configure())
    for _, run in producing_runs(client, results, params.protocol):
        if run:
            client.log_artifact(run.info.run_id, str(page), "report")


def interval_statistic(row: dict) -> str:
    """The metric the interval is of: `auc_mean` where the report's mean equals the stage's, else `auc_oof_mean`."""
    same = math.isclose(row["auc_mean"], row["auc_stage"], rel_tol=1e-9, abs_tol=1e-12)
    return tracking.HEADLINE if same else "auc_oof_mean"


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
    for row, run in producing_runs(client, results, params.protocol):
        if not run:
            missing += 1
            continue
        mean_keys = [k for k in row if k.endswith(("_mean", "_sd"))]
        values = {k: row[k] for k in mean_keys if k not in run.data.metrics}
        # 4 decimals (far below an interval's own precision) so MLflow's runs table shows them whole
        statistic = interval_statistic(row)
        if statistic != tracking.HEADLINE:
            values[statistic] = round(row["auc_mean"], INTERVAL_DECIMALS)
        values |= {"auc_ci_low": round(row["auc_low"], INTERVAL_DECIMALS),
                   "auc_ci_high": round(row["auc_high"], INTERVAL_DECIMALS)}
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if not math.isnan(float(v))]
        # the compare view plots params, not tags: give it the grid's axes where the stage did not log them (runs
        # of an older sonotune)
        axes = tracking.configuration_params(row["backbone"], row["strategy"], row["classifier"])
        axes = {k: v for k, v in axes.items() if k not in run.data.params}
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in axes.items()])
        client.set_tag(run.info.run_id, "auc_ci", f"{round(100 * (1 - params.report.alpha))} % interval of "
                                                  f"{statistic}: {_interval_name(params)}")
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
