"""svm/folds.py: which rows one outer fold of the FT-SVM fits and scores, under each protocol."""

from __future__ import annotations

import numpy as np
import pytest

from sonotune.config import Svm
from sonotune.cv import rules
from sonotune.svm.folds import evaluate_fold
from sonotune.svm.search import svm_pipeline

CFG = Svm(inner_splits=3, c_grid=[0.1, 1.0])


def _data(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    x = rng.normal(size=(n, 8)) + 1.5 * y[:, None]
    groups = np.arange(n) // 2
    folds = groups % 3  # a group's images share a test fold
    return x, y, groups, folds


@pytest.mark.parametrize("protocol", ["leakage_free", "paper"])
def test_fit_and_scored_rows_follow_the_protocol(protocol):
    x, y, groups, folds = _data()
    result = evaluate_fold(CFG, 0, protocol, svm_pipeline(), x, y, groups, folds, 1, "s", None)
    test = np.flatnonzero(folds == 1)
    if rules(protocol).svm_on_all_images:
        assert np.array_equal(result.fit_rows, np.arange(len(y)))
        assert np.array_equal(result.scored_rows, np.arange(len(y)))
    else:
        assert not np.isin(result.fit_rows, test).any()
        assert np.array_equal(result.scored_rows, test)
    assert len(result.scores) == len(result.scored_rows) and result.search.best_c in CFG.c_grid
    assert result.metrics["auc"] > 0.8  # separable classes: the fold is scored on the right rows and labels


def test_the_leakage_free_score_is_the_refitted_pipeline_on_the_test_fold():
    x, y, groups, folds = _data(seed=1)
    result = evaluate_fold(CFG, 0, "leakage_free", svm_pipeline(), x, y, groups, folds, 2, "s", None)
    test = np.flatnonzero(folds == 2)
    np.testing.assert_allclose(result.scores, result.search.estimator.decision_function(x[test]))


def test_the_inner_cv_is_grouped_unless_the_protocol_is_the_papers():
    from sonotune.svm.search import inner_folds

    x, y, groups, _ = _data()
    for protocol in ("leakage_free", "paper"):
        splits = inner_folds(3, 0, rules(protocol).grouped_folds).split(x, y, groups)
        split_groups = any(set(groups[fit]) & set(groups[held]) for fit, held in splits)
        assert split_groups == (not rules(protocol).grouped_folds)
