"""The report's statistics, built on `sonotune.stats`: a group-bootstrap interval of every fold-mean AUC, and
every paired comparison (strategy vs strategy, MLP vs SVM) with Holm's correction inside its family."""

from __future__ import annotations

from itertools import combinations, product

import numpy as np
import pandas as pd

from sonotune import stats
from sonotune.config import Params
from sonotune.stages.report.load import StudyResults, score_column
from sonotune.vocabulary import CLASSIFIERS


def add_intervals(study: StudyResults, params: Params) -> pd.DataFrame:
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


def comparisons(study: StudyResults, params: Params) -> pd.DataFrame:
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
        mlp, svm = CLASSIFIERS
        for backbone, strategy in product(s.backbones, s.strategies):
            test = _paired(frame, score_column(backbone, strategy, mlp), score_column(backbone, strategy, svm),
                           params)
            rows.append({"dataset": dataset, "family": "classifier", "backbone": backbone, "strategy": strategy,
                         "a": mlp, "b": svm, **vars(test)})
    table = pd.DataFrame(rows, columns=["dataset", "family", "backbone", "classifier", "strategy", "a", "b",
                                        "auc_a", "auc_b", "difference", "low", "high", "p_value"])
    table["strategy"] = table["strategy"].astype("Int64")
    table["p_holm"] = table.groupby(["dataset", "family"])["p_value"].transform(lambda p: stats.holm(p.to_numpy()))
    table["distinguishable"] = table["p_holm"] < params.report.alpha
    return table
