"""Stage `report`: the study's tables, figures, statistics and the one-screen summary printed at the end of a run.

Run as `sonotune report` (the last stage of `dvc repro`). For every (dataset, backbone, strategy, classifier)
of params.yaml's `study` it reads the metrics JSON and out-of-fold predictions the `finetune` and `svm`
stages wrote, and writes under `reports/`:
- `table3.csv`/`.md`: AUC of the MLP head and of the SVM, mean ± sd over folds and a 95 % interval — the
  paper's Table 3; `table4.csv`/`.md`: accuracy, precision, sensitivity MLP/SVM and the chosen C at
  `report.table4_strategy` — the paper's Table 4;
- `comparisons.csv`: every paired comparison (strategy A vs B per backbone and classifier; MLP vs SVM per
  configuration) with its p-value and Holm-adjusted p-value;
- `figures/`: `auc_heatmap_<dataset>.png`, and for the two best backbones of each dataset
  `roc_<dataset>.png` (MLP vs SVM) and `confusion_<dataset>.png` (the paper's Figs 3–8);
- `roc_best.csv` (DVC plot of the best configuration), `metrics.json` (DVC metrics), `summary.md`.
Intervals and tests come from `sonotune.stats`. The intervals are also logged onto the parent MLflow runs the
stages created (found by their tags; the report never creates a run).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations, product

import numpy as np
import pandas as pd

from sonotune import stats, tracking
from sonotune.config import Params
from sonotune.errors import DataError
from sonotune.layout import REPORTS_ROOT, metrics_file, stage_dir

CLASSIFIERS = ("mlp", "svm")
LABELS = {"mlp": "MLP", "svm": "SVM"}
THRESHOLDS = {"mlp": 0.5, "svm": 0.0}  # MLP: malignant probability; SVM: decision value
FIGURES = REPORTS_ROOT / "figures"
TABLE3_INLINE_ROWS = 12  # above this, the summary points to table3.md instead of repeating it


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Study:
    """Everything the stages wrote: one row per configuration and classifier, and per dataset the
    out-of-fold scores of every configuration side by side (one row per image)."""

    results: pd.DataFrame
    predictions: dict[str, pd.DataFrame]
    chosen_c: dict[tuple[str, str, int], list[float]]


def score_column(backbone: str, strategy: int, classifier: str) -> str:
    return f"{backbone}/{strategy}/{classifier}"


def _read_json(path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: not found; run the finetune and svm stages first (dvc repro)")
    return json.loads(path.read_text())


def _read_oof(dataset: str, backbone: str, strategy: int, classifier: str) -> pd.DataFrame:
    path = stage_dir(dataset, backbone, strategy, classifier) / "oof.csv"
    if not path.is_file():
        raise DataError(f"{path}: not found; run the finetune and svm stages first (dvc repro)")
    oof = pd.read_csv(path, dtype={"group": str})
    missing = {"path", "group", "y", "fold", "score"} - set(oof.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    return oof


def load_study(params: Params) -> Study:
    """Read the metrics and out-of-fold predictions of every configuration the params name."""
    rows, predictions, chosen_c = [], {}, {}
    study = params.study
    for dataset in study.datasets:
        wide = None
        for backbone, strategy, classifier in product(study.backbones, study.strategies, CLASSIFIERS):
            metrics = _read_json(metrics_file(dataset, backbone, strategy, classifier))
            rows.append({"dataset": dataset, "backbone": backbone, "strategy": strategy, "classifier": classifier,
                         "n_folds": len(metrics["folds"]), **metrics["mean"]})
            if classifier == "svm":
                chosen_c[(dataset, backbone, strategy)] = metrics.get("chosen_c", [])
            oof = _read_oof(dataset, backbone, strategy, classifier)
            scores = oof.set_index("path")["score"].rename(score_column(backbone, strategy, classifier))
            if wide is None:
                wide = oof[["path", "group", "y", "fold"]].set_index("path")
            elif not oof.set_index("path")[["y", "fold"]].reindex(wide.index).equals(wide[["y", "fold"]]):
                raise DataError(f"{dataset}: the configurations' out-of-fold files disagree on images or folds; "
                                "rerun the study from one params.yaml (dvc repro)")
            wide = wide.join(scores, how="inner")
        predictions[dataset] = wide.reset_index()
    return Study(pd.DataFrame(rows), predictions, chosen_c)


# ---------------------------------------------------------------- statistics


def add_intervals(study: Study, params: Params) -> pd.DataFrame:
    """`results` plus `auc_low`/`auc_high`: group-bootstrap interval of each fold-mean AUC.

    Every configuration of a dataset shares the same bootstrap replicates (same images, same folds).
    """
    cfg = params.report
    lows, highs = [], []
    weights = {dataset: _bootstrap_weights(frame, cfg.n_bootstrap, params.seed)
               for dataset, frame in study.predictions.items()}
    for row in study.results.itertuples():
        frame = study.predictions[row.dataset]
        column = frame[score_column(row.backbone, row.strategy, row.classifier)].to_numpy()
        replicates = stats.fold_mean_auc(frame["y"], column, frame["fold"], weights[row.dataset])
        interval = stats.percentile_interval(row.auc_mean, replicates, cfg.alpha)
        lows.append(interval.low)
        highs.append(interval.high)
    return study.results.assign(auc_low=lows, auc_high=highs)


def _bootstrap_weights(frame: pd.DataFrame, n: int, seed: int) -> np.ndarray:
    return stats.group_bootstrap_weights(frame["y"], frame["group"], frame["fold"], n, seed)


def _paired(frame: pd.DataFrame, a: str, b: str, params: Params) -> stats.PairedTest:
    cfg = params.report
    if cfg.paired_test == "delong":
        return stats.delong_test(frame["y"], frame[a], frame[b], frame["fold"], cfg.alpha)
    return stats.paired_bootstrap_test(frame["y"], frame[a], frame[b], frame["group"], frame["fold"],
                                       cfg.n_bootstrap, cfg.alpha, params.seed)


def comparisons(study: Study, params: Params) -> pd.DataFrame:
    """Every paired comparison, with Holm's correction inside each family of questions.

    Families: the strategies of one (dataset, backbone, classifier) — "which strategy?"; and the
    configurations of one dataset — "MLP or SVM?".
    """
    s = params.study
    rows = []
    for dataset, frame in study.predictions.items():
        for backbone, classifier in product(s.backbones, CLASSIFIERS):
            for a, b in combinations(s.strategies, 2):
                test = _paired(frame, score_column(backbone, a, classifier), score_column(backbone, b, classifier),
                               params)
                rows.append({"dataset": dataset, "family": f"strategy:{backbone}:{classifier}",
                             "backbone": backbone, "classifier": classifier, "a": f"{a}", "b": f"{b}",
                             **vars(test)})
        for backbone, strategy in product(s.backbones, s.strategies):
            test = _paired(frame, score_column(backbone, strategy, "mlp"), score_column(backbone, strategy, "svm"),
                           params)
            rows.append({"dataset": dataset, "family": "classifier", "backbone": backbone, "strategy": strategy,
                         "a": "mlp", "b": "svm", **vars(test)})
    table = pd.DataFrame(rows, columns=["dataset", "family", "backbone", "classifier", "strategy", "a", "b",
                                        "auc_a", "auc_b", "difference", "low", "high", "p_value"])
    table["strategy"] = table["strategy"].astype("Int64")
    table["p_holm"] = table.groupby(["dataset", "family"])["p_value"].transform(lambda p: stats.holm(p.to_numpy()))
    table["distinguishable"] = table["p_holm"] < params.report.alpha
    return table


# ---------------------------------------------------------------- tables


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


def table4(study: Study, strategy: int) -> pd.DataFrame:
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
    return f"Strategy {strategy} %: fold means (MLP threshold 0.5, SVM decision 0).\n\n" + "\n".join(lines) + "\n"


# ---------------------------------------------------------------- findings


def best_per_backbone(results: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, backbone): the best (strategy, classifier) by fold-mean AUC, and its paired test against
    the runner-up strategy with the same classifier (NaN when the study holds one strategy)."""
    rows = []
    for (dataset, backbone), group in results.groupby(["dataset", "backbone"], sort=False):
        best = group.loc[group["auc_mean"].idxmax()]
        rivals = group[(group["classifier"] == best.classifier) & (group["strategy"] != best.strategy)]
        row = {"dataset": dataset, "backbone": backbone, "strategy": best.strategy, "classifier": best.classifier,
               "auc": best.auc_mean, "auc_low": best.auc_low, "auc_high": best.auc_high,
               "runner_up": None, "runner_up_auc": np.nan, "p_value": np.nan, "p_holm": np.nan}
        if len(rivals):
            runner = rivals.loc[rivals["auc_mean"].idxmax()]
            pair = {str(best.strategy), str(runner.strategy)}
            test = tests[(tests["dataset"] == dataset) & (tests["family"] == f"strategy:{backbone}:{best.classifier}")
                         & tests.apply(lambda t: {t.a, t.b} == pair, axis=1)].iloc[0]
            row |= {"runner_up": runner.strategy, "runner_up_auc": runner.auc_mean,
                    "p_value": test.p_value, "p_holm": test.p_holm}
        rows.append(row)
    return pd.DataFrame(rows)


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def best_lines(best: pd.DataFrame, alpha: float, test_name: str) -> list[str]:
    lines = []
    for row in best.itertuples():
        head = (f"- {row.dataset} / {row.backbone}: {row.strategy} % with {LABELS[row.classifier]}, "
                f"AUC {row.auc:.3f} [{row.auc_low:.2f}, {row.auc_high:.2f}]")
        if row.runner_up is None:
            lines.append(f"{head}; the study holds one strategy, no runner-up to compare")
            continue
        verdict = "distinguishable" if row.p_holm < alpha else "not distinguishable"
        lines.append(f"{head}; runner-up {row.runner_up} % ({row.runner_up_auc:.3f}): {test_name} "
                     f"p {_p(row.p_value)}, Holm p {_p(row.p_holm)} → {verdict} at α = {alpha:g}")
    return lines


def classifier_lines(tests: pd.DataFrame, alpha: float) -> list[str]:
    lines = []
    for dataset, group in tests[tests["family"] == "classifier"].groupby("dataset", sort=False):
        ahead = int((group["difference"] < 0).sum())
        significant = group[group["distinguishable"]]
        detail = "; ".join(f"{t.backbone} {t.strategy} %: {'SVM' if t.difference < 0 else 'MLP'} "
                           f"{abs(t.difference):+.3f}, Holm p {_p(t.p_holm)}" for t in significant.itertuples())
        lines.append(f"- {dataset}: SVM ahead in {ahead} of {len(group)} configurations; "
                     f"{len(significant)} distinguishable after Holm at α = {alpha:g}"
                     + (f" ({detail})" if detail else ""))
    return lines


# ---------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_auc_heatmap(path, results: pd.DataFrame, dataset: str) -> None:
    """Backbone × strategy fold-mean AUC, one panel per classifier, on a shared colour scale."""
    plt = _plt()
    data = results[results["dataset"] == dataset]
    backbones = list(dict.fromkeys(data["backbone"]))
    strategies = sorted(set(data["strategy"]))
    low, high = float(data["auc_mean"].min()), float(data["auc_mean"].max())
    if high - low < 0.02:
        low, high = low - 0.01, high + 0.01
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.5 * len(strategies), 1.6 + 0.45 * len(backbones)),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, classifier in zip(axes[0], CLASSIFIERS):
        grid = (data[data["classifier"] == classifier]
                .pivot(index="backbone", columns="strategy", values="auc_mean").reindex(index=backbones,
                                                                                        columns=strategies))
        image = ax.imshow(grid.to_numpy(), vmin=low, vmax=high, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                    color="white" if value < (low + high) / 2 else "black")
        ax.set_xticks(range(len(strategies)), [f"{s} %" for s in strategies])
        ax.set_yticks(range(len(backbones)), backbones)
        ax.set_title(f"{LABELS[classifier]}", fontsize=10)
        ax.set_xlabel("layers fine-tuned")
    fig.colorbar(image, ax=axes[0].tolist(), label="AUC (fold mean)")
    fig.suptitle(f"{dataset}: AUC by backbone and strategy", fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def two_best_backbones(best: pd.DataFrame, dataset: str) -> pd.DataFrame:
    return best[best["dataset"] == dataset].sort_values("auc", ascending=False, kind="stable").head(2)


def save_roc_overlay(path, frame: pd.DataFrame, results: pd.DataFrame, picks: pd.DataFrame, dataset: str) -> None:
    """Per picked backbone (at its best strategy): pooled out-of-fold ROC of the MLP head and of the SVM."""
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.2), squeeze=False)
    for ax, pick in zip(axes[0], picks.itertuples()):
        for classifier in CLASSIFIERS:
            score = frame[score_column(pick.backbone, pick.strategy, classifier)]
            fpr, tpr, _ = roc_curve(frame["y"], score)
            r = results[(results["dataset"] == dataset) & (results["backbone"] == pick.backbone)
                        & (results["strategy"] == pick.strategy) & (results["classifier"] == classifier)].iloc[0]
            ax.plot(fpr, tpr, label=f"{LABELS[classifier]}  AUC {r.auc_mean:.3f} [{r.auc_low:.2f}, {r.auc_high:.2f}]")
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
        ax.set(xlabel="false positive rate", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.set_title(f"{pick.backbone}, {pick.strategy} % fine-tuned", fontsize=10)
        ax.legend(loc="lower right", fontsize=8, title="fold-mean AUC", title_fontsize=8)
    fig.suptitle(f"{dataset}: out-of-fold ROC, MLP head vs SVM", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_confusion_grid(path, frame: pd.DataFrame, picks: pd.DataFrame, dataset: str) -> None:
    """Confusion matrices of the out-of-fold predictions: a row per picked backbone, MLP and SVM columns."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _plt()
    fig, axes = plt.subplots(len(picks), 2, figsize=(7, 3.3 * len(picks)), squeeze=False)
    for row_axes, pick in zip(axes, picks.itertuples()):
        for ax, classifier in zip(row_axes, CLASSIFIERS):
            predicted = (frame[score_column(pick.backbone, pick.strategy, classifier)] >= THRESHOLDS[classifier])
            ConfusionMatrixDisplay.from_predictions(frame["y"], predicted.astype(int), labels=[0, 1],
                                                    display_labels=["benign", "malignant"], ax=ax, colorbar=False)
            ax.set_title(f"{pick.backbone} {pick.strategy} % — {LABELS[classifier]}", fontsize=9)
    fig.suptitle(f"{dataset}: out-of-fold confusion matrices", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def roc_best_points(frame: pd.DataFrame, backbone: str, strategy: int, grid: int = 101) -> pd.DataFrame:
    """Pooled out-of-fold ROC of MLP and SVM on one false-positive-rate grid (a DVC plot with fixed columns)."""
    from sklearn.metrics import roc_curve

    fpr_grid = np.linspace(0, 1, grid)
    points = {"fpr": fpr_grid}
    for classifier in CLASSIFIERS:
        fpr, tpr, _ = roc_curve(frame["y"], frame[score_column(backbone, strategy, classifier)])
        points[f"{classifier}_tpr"] = np.interp(fpr_grid, fpr, tpr)
    return pd.DataFrame(points).round(4)


# ---------------------------------------------------------------- MLflow


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
        values |= {"auc_ci_low": row["auc_low"], "auc_ci_high": row["auc_high"]}
        metrics = [Metric(k, float(v), now, 0) for k, v in values.items() if not math.isnan(float(v))]
        # the compare view plots params, not tags: give it the grid's axes where the stage did not log them
        axes = {k: str(row[k]) for k in ("backbone", "strategy", "classifier") if k not in run.data.params}
        client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in axes.items()])
        client.set_tag(run.info.run_id, "auc_ci", f"{round(100 * (1 - params.report.alpha))} % group bootstrap "
                                                  f"({params.report.n_bootstrap} replicates)")
        updated += 1
    return updated, missing


def _producing_run(client, experiment_id: str, row: dict, protocol: str):
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in (
        ("dataset", row["dataset"]), ("backbone", row["backbone"]), ("strategy", row["strategy"]),
        ("classifier", row["classifier"]), ("protocol", protocol), ("fold", "all")))
    runs = client.search_runs([experiment_id], query + " and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    for run in runs:
        logged = run.data.metrics.get("auc_mean")
        if logged is not None and math.isclose(logged, row["auc_mean"], rel_tol=1e-9, abs_tol=1e-12):
            return run
    return None


# ---------------------------------------------------------------- outputs


def dvc_metrics(results: pd.DataFrame) -> dict:
    """Nested {dataset: {backbone: {strategy: {classifier: {auc, auc_sd, auc_low, auc_high}}}}}."""
    tree: dict = {}
    for row in results.itertuples():
        node = tree.setdefault(row.dataset, {}).setdefault(row.backbone, {}).setdefault(str(row.strategy), {})
        node[row.classifier] = {k: round(float(getattr(row, f)), 4) for k, f in
                                (("auc", "auc_mean"), ("auc_sd", "auc_sd"), ("auc_low", "auc_low"),
                                 ("auc_high", "auc_high"), ("accuracy", "accuracy_mean"))}
    return tree


def summary_text(params: Params, results: pd.DataFrame, table: pd.DataFrame, best: pd.DataFrame,
                 tests: pd.DataFrame, t4_strategy: int, mlflow_note: str) -> str:
    cfg = params.report
    test_name = "DeLong" if cfg.paired_test == "delong" else "paired bootstrap"
    top = results.loc[results["auc_mean"].idxmax()]
    lines = [f"# sonotune study — {', '.join(params.study.datasets)} · protocol `{params.protocol}` · "
             f"{params.cv.n_splits}-fold CV", ""]
    if len(table) <= TABLE3_INLINE_ROWS:
        lines += table3_markdown(table, cfg.alpha).splitlines()
    else:
        lines.append(f"Table 3 ({len(table)} rows): reports/table3.md")
    lines += ["", "Best strategy per backbone (vs the runner-up strategy, same classifier; Holm within backbone):"]
    lines += best_lines(best, cfg.alpha, test_name)
    lines += ["", f"MLP vs SVM on the same folds ({test_name}, Holm within dataset):"]
    lines += classifier_lines(tests, cfg.alpha)
    lines += ["", f"Best: {top.dataset} / {top.backbone} at {top.strategy} % with the {LABELS[top.classifier]} head "
                  f"(AUC {top.auc_mean:.3f} [{top.auc_low:.2f}, {top.auc_high:.2f}]).",
              f"Files: reports/table3.md, table4.md ({t4_strategy} %), comparisons.csv, figures/.",
              mlflow_note,
              browse_line()]
    return "\n".join(lines) + "\n"


def browse_line() -> str:
    """How to see the runs: the local store through `mlflow ui`, or the team server's address (password masked)."""
    from sonotune import team

    uri = tracking.tracking_uri()
    if team.is_server(uri):
        return f"Browse the runs: {team.redact(uri)}"
    return f"Browse the runs: mlflow ui --backend-store-uri {uri}"


def run_report(params: Params) -> str:
    """Build every report file from the stages' outputs; return the one-screen summary."""
    study = load_study(params)
    results = add_intervals(study, params)
    study = Study(results, study.predictions, study.chosen_c)
    tests = comparisons(study, params)
    table = table3(results)
    best = best_per_backbone(results, tests)
    t4_strategy = table4_strategy(params)
    t4 = table4(study, t4_strategy)

    FIGURES.mkdir(parents=True, exist_ok=True)
    for old in FIGURES.glob("*.png"):
        old.unlink()
    for dataset, frame in study.predictions.items():
        picks = two_best_backbones(best, dataset)
        save_auc_heatmap(FIGURES / f"auc_heatmap_{dataset}.png", results, dataset)
        save_roc_overlay(FIGURES / f"roc_{dataset}.png", frame, results, picks, dataset)
        save_confusion_grid(FIGURES / f"confusion_{dataset}.png", frame, picks, dataset)
    top = results.loc[results["auc_mean"].idxmax()]
    roc_best_points(study.predictions[top.dataset], top.backbone, top.strategy).to_csv(
        REPORTS_ROOT / "roc_best.csv", index=False)

    if params.report.log_to_mlflow:
        updated, missing = log_to_parent_runs(results, params)
        mlflow_note = f"MLflow: intervals added to {updated} parent runs" + (
            f"; {missing} configurations have no matching run" if missing else "") + "."
    else:
        mlflow_note = "MLflow: not updated (report.log_to_mlflow: false)."

    table.to_csv(REPORTS_ROOT / "table3.csv", index=False, float_format="%.4f")
    (REPORTS_ROOT / "table3.md").write_text(table3_markdown(table, params.report.alpha))
    t4.to_csv(REPORTS_ROOT / "table4.csv", index=False, float_format="%.4f")
    (REPORTS_ROOT / "table4.md").write_text(table4_markdown(t4, t4_strategy, params.report.table4_strategy))
    tests.to_csv(REPORTS_ROOT / "comparisons.csv", index=False, float_format="%.4g")
    (REPORTS_ROOT / "metrics.json").write_text(json.dumps(dvc_metrics(results), indent=2) + "\n")
    text = summary_text(params, results, table, best, tests, t4_strategy, mlflow_note)
    (REPORTS_ROOT / "summary.md").write_text(text)
    return text
