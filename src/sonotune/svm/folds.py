"""One outer fold of the FT-SVM under a protocol: search C on the fold's fit rows, then score.

Pure functions over arrays (features of every image from the fold's network, labels, groups, the outer fold of
each image); which rows are fitted and which are scored is the protocol's rule (`cv.rules`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from sklearn.pipeline import Pipeline

from sonotune.config import Svm
from sonotune.cv import rules, svm_fit_rows
from sonotune.metrics import binary_metrics
from sonotune.svm.search import CSearch, inner_cv_metrics, inner_folds, search_c
from sonotune.vocabulary import THRESHOLDS


@dataclass(frozen=True)
class SvmFoldResult:
    search: CSearch
    fit_rows: np.ndarray  # rows the C search and the final pipeline were fitted on
    scored_rows: np.ndarray  # rows the fold's metrics are computed on
    scores: np.ndarray  # decision scores of scored_rows
    metrics: dict[str, float]


def evaluate_fold(cfg: Svm, seed: int, protocol: str, estimator: Pipeline, x: np.ndarray, y: np.ndarray,
                  groups: np.ndarray, folds: np.ndarray, fold: int, study: str, storage: str | None,
                  callbacks: Sequence[Callable] = ()) -> SvmFoldResult:
    """Search C on the fold's fit rows, then score: the test fold once (leakage_free) or inner CV over all
    images (paper). `x`: every image's features from fold `fold`'s network; `folds`: each image's test fold."""
    fit, grouped = svm_fit_rows(protocol, folds, fold), rules(protocol).grouped_folds
    search = search_c(cfg, seed, estimator, x[fit], y[fit], groups[fit], study, storage, callbacks, grouped)
    if rules(protocol).svm_on_all_images:
        inner = inner_folds(cfg.inner_splits, seed, grouped)
        metrics, scores = inner_cv_metrics(search.estimator, x, y, groups, inner)
        return SvmFoldResult(search, fit, np.arange(len(y)), scores, metrics)
    test = np.flatnonzero(folds == fold)
    scores = search.estimator.decision_function(x[test])
    return SvmFoldResult(search, fit, test, scores, binary_metrics(y[test], scores, THRESHOLDS["svm"]))
