"""The report's statistics, built on `sonotune.stats`: every printed AUC recomputed from the out-of-fold scores
with an interval for that very number, and every paired comparison (strategy vs strategy, MLP vs SVM) with
Holm's correction inside its family. Where a dataset's folds hold too few groups of a class for a calibrated
test or interval (`stats.MIN_GROUPS_PER_CLASS`), they are left out and the reason is said instead.

With repeated cross-validation (`cv.repeats` > 1) the paired comparisons include training variance: the
difference of the two configurations' AUC on every (repeat, fold) goes through the Nadeau–Bengio corrected
resampled t-test (`stats_repeated`), whose variance also covers the overlap of the training sets. With one
repeat they are conditional on the five trained models, and `variance_note` says so."""

from __future__ import annotations

from itertools import combinations, product

import numpy as np
import pandas as pd

from sonotune import stats, stats_repeated
from sonotune.config import Params
from sonotune.stages.report.load import StudyResults, score_column
from sonotune.vocabulary import CLASSIFIERS

TEST_NAMES = {"permutation": "cluster permutation test", "clustered_delong": "clustered DeLong",
              "delong": "DeLong", "bootstrap": "paired bootstrap"}
INTERVAL_NAMES = {"clustered": "clustered (Obuchowski) variance, logit scale, t reference",
                  "bootstrap": "group bootstrap, percentile"}


def too_few_groups(frame: pd.DataFrame) -> str | None:
    """Why this dataset's folds allow no calibrated test or interval, or None."""
    return stats.too_few_groups(frame["y"], frame["group"], frame["fold"], stats.MIN_GROUPS_PER_CLASS)


def fold_aucs(frame: pd.DataFrame, column: str) -> np.ndarray:
    """Each fold's AUC of one configuration's out-of-fold scores (NaN for a fold lacking a class)."""
    return np.array([stats.weighted_auc(part["y"], part[column], np.ones(len(part)))[0]
                     for _, part in frame.groupby("fold", sort=True)])


def add_intervals(study: StudyResults, params: Params) -> pd.DataFrame:
    """`results` with the printed statistic recomputed from the out-of-fold scores and its interval.

    `auc_mean`/`auc_sd` become the mean and sd over folds of each fold's out-of-fold AUC, `auc_low`/`auc_high`
    its (1 − alpha) interval; `auc_stage` keeps the stage's own `auc_mean` (the same number under
    `leakage_free`; under `paper` the SVM's is its inner-CV AUC, which has no interval). With
    `report.interval: bootstrap` every configuration of a dataset shares the same replicates.
    """
    cfg = params.report
    rows = []
    for dataset, frame in study.predictions.items():
        reason = too_few_groups(frame)
        weights = (stats.group_bootstrap_weights(frame["y"], frame["group"], frame["fold"], cfg.n_bootstrap,
                                                 params.seed) if cfg.interval == "bootstrap" else None)
        for row in study.results[study.results["dataset"] == dataset].itertuples():
            column = score_column(row.backbone, row.strategy, row.classifier)
            per_fold = fold_aucs(frame, column)
            mean = float(np.nanmean(per_fold))
            sd = float(np.nanstd(per_fold, ddof=1)) if np.sum(~np.isnan(per_fold)) > 1 else 0.0
            if reason:
                interval = stats.Interval(mean, float("nan"), float("nan"))
            elif weights is not None:
                replicates = stats.fold_mean_auc(frame["y"], frame[column], frame["fold"], weights)
                interval = stats.percentile_interval(mean, replicates, cfg.alpha)
            else:
                interval = stats.clustered_auc_ci(frame["y"], frame[column], frame["group"], frame["fold"],
                                                  cfg.alpha)
            rows.append({"index": row.Index, "auc_stage": row.auc_mean, "auc_mean": mean, "auc_sd": sd,
                         "auc_low": interval.low, "auc_high": interval.high})
    recomputed = pd.DataFrame(rows).set_index("index").sort_index()
    return study.results.drop(columns=["auc_mean", "auc_sd"]).join(recomputed)


def _paired(frame: pd.DataFrame, a: str, b: str, params: Params) -> stats.PairedTest:
    cfg = params.report
    replicates = cfg.n_permutations if cfg.paired_test == "permutation" else cfg.n_bootstrap
    return stats.paired_test(cfg.paired_test, frame["y"], frame[a], frame[b], frame["group"], frame["fold"],
                             cfg.alpha, replicates, params.seed)


def _no_test(frame: pd.DataFrame, a: str, b: str) -> stats.PairedTest:
    auc_a, auc_b = (float(np.nanmean(fold_aucs(frame, c))) for c in (a, b))
    return stats.PairedTest(auc_a, auc_b, auc_a - auc_b, float("nan"), float("nan"), float("nan"))


def repeat_count(study: StudyResults, dataset: str) -> int:
    frame = study.by_repeat.get(dataset)
    return 1 if frame is None or frame.empty else int(frame["repeat"].nunique())


def variance_note(study: StudyResults, params: Params) -> str:
    """Which sources of variance the printed intervals and tests cover, in one sentence."""
    repeats = max((repeat_count(study, dataset) for dataset in study.predictions), default=1)
    sampling = "the sampling of patients/groups and images"
    if repeats == 1:
        return (f"Intervals and paired tests cover {sampling} only, with the {params.cv.n_splits} trained models "
                "held fixed: training variance (initialisation, dropout, shuffling, which images train) is NOT "
                "covered (`cv.repeats: 1`; set cv.repeats ≥ 3 to include it).")
    return (f"AUC intervals cover {sampling} (repeat 0's models held fixed); the paired comparisons use all "
            f"{repeats} repeats × {params.cv.n_splits} folds with the Nadeau–Bengio corrected resampled t-test, "
            "so they also cover training variance and the overlap of training sets.")


def repeated_aucs(frame: pd.DataFrame, column: str) -> np.ndarray:
    """(repeats, folds) AUC of one configuration from the out-of-fold scores of every repeat."""
    return np.array([fold_aucs(part, column) for _, part in frame.groupby("repeat", sort=True)])


def _repeated(frame: pd.DataFrame, a: str, b: str, n_splits: int, alpha: float) -> stats.PairedTest:
    auc_a, auc_b = repeated_aucs(frame, a), repeated_aucs(frame, b)
    keep = ~(np.isnan(auc_a) | np.isnan(auc_b))
    test = stats_repeated.corrected_resampled_ttest((auc_a - auc_b)[keep],
                                                    stats_repeated.kfold_test_train_ratio(n_splits), alpha)
    return stats.PairedTest(float(auc_a[keep].mean()), float(auc_b[keep].mean()), test.mean, test.low, test.high,
                            test.p_value)


def comparisons(study: StudyResults, params: Params) -> pd.DataFrame:
    """Every paired comparison, with Holm's correction inside each family of questions.

    Families: the strategies of one (dataset, backbone, classifier) — "which strategy?"; the backbones of one
    (dataset, classifier, strategy) — "which backbone?"; and the configurations of one dataset — "MLP or SVM?". `no_test` says why a dataset's rows carry no p-value.
    """
    s = params.study
    rows = []
    for dataset, frame in study.predictions.items():
        reason = too_few_groups(frame)
        repeated = repeat_count(study, dataset) > 1

        def compare(a: str, b: str) -> dict:
            if repeated:
                test = _repeated(study.by_repeat[dataset], a, b, params.cv.n_splits, params.report.alpha)
                return vars(test) | {"no_test": None, "test": "corrected resampled t"}
            test = _no_test(frame, a, b) if reason else _paired(frame, a, b, params)
            return vars(test) | {"no_test": reason, "test": TEST_NAMES[params.report.paired_test]}

        for backbone, classifier in product(s.backbones, CLASSIFIERS):
            for a, b in combinations(s.strategies, 2):
                rows.append({"dataset": dataset, "family": f"strategy:{backbone}:{classifier}",
                             "backbone": backbone, "classifier": classifier, "a": f"{a}", "b": f"{b}",
                             **compare(score_column(backbone, a, classifier), score_column(backbone, b, classifier))})
        for classifier, strategy in product(CLASSIFIERS, s.strategies):
            for a, b in combinations(s.backbones, 2):
                rows.append({"dataset": dataset, "family": f"backbone:{classifier}:{strategy}",
                             "classifier": classifier, "strategy": strategy, "a": a, "b": b,
                             **compare(score_column(a, strategy, classifier), score_column(b, strategy, classifier))})
        mlp, svm = CLASSIFIERS
        for backbone, strategy in product(s.backbones, s.strategies):
            rows.append({"dataset": dataset, "family": "classifier", "backbone": backbone, "strategy": strategy,
                         "a": mlp, "b": svm,
                         **compare(score_column(backbone, strategy, mlp), score_column(backbone, strategy, svm))})
    table = pd.DataFrame(rows, columns=["dataset", "family", "backbone", "classifier", "strategy", "a", "b",
                                        "auc_a", "auc_b", "difference", "low", "high", "p_value", "no_test",
                                        "test"])
    table["strategy"] = table["strategy"].astype("Int64")
    table["p_holm"] = table.groupby(["dataset", "family"])["p_value"].transform(lambda p: stats.holm(p.to_numpy()))
    table["distinguishable"] = table["p_holm"] < params.report.alpha
    return table
