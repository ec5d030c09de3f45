"""The report's statistics, built on `sonotune.stats`: every printed AUC recomputed from the out-of-fold scores
with an interval for that very number, and every paired comparison (strategy vs strategy, backbone vs backbone,
MLP vs SVM) with its verdict — *different*, *equivalent* within ±`report.equivalence_margin`, or *inconclusive* —
decided by `verdicts` with Holm's correction over every comparison of the report at once (study-wide: the
chance of any false "different" claim, and of any false "equivalent" claim, stays below alpha however many
comparisons the grid holds; tests/test_stats_study.py proves it by simulation through `verdicts`). Where a
dataset's folds hold too few groups of a class for a calibrated test or interval (`stats.MIN_GROUPS_PER_CLASS`),
they are left out and the reason is said instead.

With repeated cross-validation (`cv.repeats` > 1) the paired comparisons include training variance: the
difference of the two configurations' AUC on every (repeat, fold) goes through the Nadeau–Bengio corrected
resampled t-test (`stats_repeated`), whose variance also covers the overlap of the training sets. With one
repeat they are conditional on the five trained models, and `variance_note` says so."""

from __future__ import annotations

from itertools import combinations, product

import numpy as np
import pandas as pd

from sonotune import cv, stats, stats_repeated
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

    `auc_mean` becomes the mean over folds of each fold's out-of-fold AUC — with repeated CV, the mean of that
    over the repeats: one number everywhere (tables, heatmap, best pick, summary, MLflow, the comparisons'
    AUCs) —, `auc_sd` the sd of the (repeat, fold) AUCs, `auc_low`/`auc_high` its (1 − alpha) interval
    (`stats.clustered_auc_ci` over the repeats; with `report.interval: bootstrap` every configuration of a
    dataset shares the same resampled groups, in every repeat); `auc_stage` keeps the stage's own `auc_mean`
    (the same number under `leakage_free` and one repeat; under `paper` the SVM's is its inner-CV AUC, which
    has no interval).
    """
    cfg = params.report
    rows = []
    for dataset, frame in study.predictions.items():
        reason = too_few_groups(frame)
        every = study.by_repeat.get(dataset, frame.assign(repeat=0))
        weights = bootstrap_weights(frame, every, params) if cfg.interval == "bootstrap" else None
        repeat_fold = every["repeat"] * (every["fold"].max() + 1) + every["fold"]
        for row in study.results[study.results["dataset"] == dataset].itertuples():
            column = score_column(row.backbone, row.strategy, row.classifier)
            per_fold = repeated_aucs(every, column)
            mean = float(np.nanmean(np.nanmean(per_fold, axis=1)))
            sd = float(np.nanstd(per_fold, ddof=1)) if np.sum(~np.isnan(per_fold)) > 1 else 0.0
            if reason:
                interval = stats.Interval(mean, float("nan"), float("nan"))
            elif weights is not None:
                replicates = stats.fold_mean_auc(every["y"], every[column], repeat_fold, weights)
                interval = stats.percentile_interval(mean, replicates, cfg.alpha)
            else:
                interval = stats.clustered_auc_ci(every["y"], every[column], every["group"], every["fold"],
                                                  cfg.alpha, every["repeat"])
            rows.append({"index": row.Index, "auc_stage": row.auc_mean, "auc_mean": mean, "auc_sd": sd,
                         "auc_low": interval.low, "auc_high": interval.high})
    recomputed = pd.DataFrame(rows).set_index("index").sort_index()
    return study.results.drop(columns=["auc_mean", "auc_sd"]).join(recomputed)


def bootstrap_weights(first: pd.DataFrame, every: pd.DataFrame, params: Params) -> np.ndarray:
    """Group-bootstrap multiplicities drawn on repeat 0's folds (`first`), given to every repeat's row of the
    same image (`every`): each replicate resamples the same patients in every repeat."""
    weights = stats.group_bootstrap_weights(first["y"], first["group"], first["fold"], params.report.n_bootstrap,
                                            params.seed)
    position = pd.Series(np.arange(len(first)), index=first["path"])
    return weights[:, position[every["path"]].to_numpy()]


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
    return (f"Every AUC is the mean over {repeats} repeats; its interval covers {sampling} (the trained models "
            f"held fixed); the paired comparisons use all {repeats} repeats × {params.cv.n_splits} folds with the Nadeau–Bengio corrected resampled t-test, "
            "so they also cover training variance and the overlap of training sets.")


def repeated_aucs(frame: pd.DataFrame, column: str) -> np.ndarray:
    """(repeats, folds) AUC of one configuration from the out-of-fold scores of every repeat."""
    return np.array([fold_aucs(part, column) for _, part in frame.groupby("repeat", sort=True)])


def fitted_test_train_ratio(params: Params) -> float:
    """n_test / n_train of the corrected resampled t-test, n_train the images the weights were fitted on: the
    validation split that picks the epoch (none when the protocol picks it on the test fold) fits none."""
    val_fraction = 0.0 if cv.rules(params.protocol).epoch_on_test_fold else params.cv.val_fraction
    return stats_repeated.kfold_test_train_ratio(params.cv.n_splits, val_fraction)


def _repeated(frame: pd.DataFrame, a: str, b: str, params: Params) -> stats.PairedTest:
    auc_a, auc_b = repeated_aucs(frame, a), repeated_aucs(frame, b)
    keep = ~(np.isnan(auc_a) | np.isnan(auc_b))
    test = stats_repeated.corrected_resampled_ttest((auc_a - auc_b)[keep], fitted_test_train_ratio(params),
                                                    params.report.alpha)
    return stats.PairedTest(float(auc_a[keep].mean()), float(auc_b[keep].mean()), test.mean, test.low, test.high,
                            test.p_value, test.se, float(test.df))


def comparison_pairs(backbones, strategies) -> list[dict]:
    """The report's paired comparisons of one dataset, as rows naming the two configurations compared (`column_a`,
    `column_b`: their score columns): strategy A vs B per backbone and classifier ("which strategy?"), backbone
    A vs B per classifier and strategy ("which backbone?"), MLP vs SVM per backbone and strategy ("MLP or SVM?").
    The report and the study-wide simulation (tests/test_stats_study.py) both take their comparisons from here."""
    rows = []
    for backbone, classifier in product(backbones, CLASSIFIERS):
        for a, b in combinations(strategies, 2):
            rows.append({"family": f"strategy:{backbone}:{classifier}", "backbone": backbone, "classifier": classifier,
                         "a": f"{a}", "b": f"{b}", "column_a": score_column(backbone, a, classifier),
                         "column_b": score_column(backbone, b, classifier)})
    for classifier, strategy in product(CLASSIFIERS, strategies):
        for a, b in combinations(backbones, 2):
            rows.append({"family": f"backbone:{classifier}:{strategy}", "classifier": classifier, "strategy": strategy,
                         "a": a, "b": b, "column_a": score_column(a, strategy, classifier),
                         "column_b": score_column(b, strategy, classifier)})
    mlp, svm = CLASSIFIERS
    for backbone, strategy in product(backbones, strategies):
        rows.append({"family": "classifier", "backbone": backbone, "strategy": strategy, "a": mlp, "b": svm,
                     "column_a": score_column(backbone, strategy, mlp),
                     "column_b": score_column(backbone, strategy, svm)})
    return rows


def verdicts(p_value, difference, se, df, alpha: float, margin: float) -> dict[str, np.ndarray]:
    """Each comparison's verdict, Holm-corrected over all comparisons given (the last axis: one report's
    comparisons; a 2-D input is one row per simulated study).

    `p_holm` (the difference test's p, Holm over all of them) < alpha: *different*. Otherwise `p_equivalent_holm`
    (two one-sided tests of |difference| ≥ margin on the same standard error and t reference, Holm over all of
    them) < alpha (`within_margin`): *equivalent* within ±margin. Otherwise *inconclusive*; a comparison without
    a p-value (`no_test`) is inconclusive too. A difference both distinguishable and within the margin is
    *different* (`wording` adds that it is smaller than the margin: `within_margin` is a claim either way)."""
    p_holm = stats.holm(p_value)
    p_equivalent = np.where(np.isnan(p_value), np.nan, stats.equivalence_p(difference, se, df, margin))
    p_equivalent_holm = stats.holm(p_equivalent)
    different, within_margin = p_holm < alpha, p_equivalent_holm < alpha
    verdict = np.where(different, "different", np.where(within_margin, "equivalent", "inconclusive"))
    return {"p_holm": p_holm, "p_equivalent": p_equivalent, "p_equivalent_holm": p_equivalent_holm,
            "distinguishable": different, "within_margin": within_margin, "verdict": verdict}


COLUMNS = ["dataset", "family", "backbone", "classifier", "strategy", "a", "b", "auc_a", "auc_b", "difference", "low",
           "high", "se", "df", "p_value", "no_test", "test"]


def comparisons(study: StudyResults, params: Params) -> pd.DataFrame:
    """Every paired comparison of `comparison_pairs` for every dataset, with its verdict (`verdicts`: Holm over
    all rows of the table). `no_test` says why a dataset's rows carry no p-value."""
    rows = []
    for dataset, frame in study.predictions.items():
        reason = too_few_groups(frame)
        repeated = repeat_count(study, dataset) > 1
        for pair in comparison_pairs(params.study.backbones, params.study.strategies):
            a, b = pair.pop("column_a"), pair.pop("column_b")
            if repeated:
                test = _repeated(study.by_repeat[dataset], a, b, params)
                named = {"no_test": None, "test": "corrected resampled t"}
            else:
                test = _no_test(frame, a, b) if reason else _paired(frame, a, b, params)
                named = {"no_test": reason, "test": TEST_NAMES[params.report.paired_test]}
            rows.append({"dataset": dataset, **pair, **vars(test), **named})
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["strategy"] = table["strategy"].astype("Int64")
    decided = verdicts(table["p_value"].to_numpy(float), table["difference"].to_numpy(float),
                       table["se"].to_numpy(float), table["df"].to_numpy(float), params.report.alpha,
                       params.report.equivalence_margin)
    return table.assign(**decided)
