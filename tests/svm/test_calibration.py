"""The deployable SVM head: C and its inner-CV AUC are the svm stage's search's, one pipeline refitted on every
row carries one Platt sigmoid, and the probability ranks images as the decision value does."""

import numpy as np

from sonotune.config import Svm
from sonotune.svm.calibration import calibrated_svm
from sonotune.svm.search import search_c, svm_pipeline


def _features(seed: int = 0, n_groups: int = 30):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_groups), 2)  # two images per patient
    y = np.repeat(np.arange(n_groups) % 2, 2)
    x = rng.normal(size=(len(y), 8)) + 0.8 * y[:, None]
    return x, y, groups


def test_c_and_inner_auc_are_the_svm_stages_search():
    x, y, groups = _features()
    cfg = Svm(c_grid=[0.001, 0.1, 10.0], inner_splits=3)
    model, c, inner_auc = calibrated_svm(cfg, 7, x, y, groups)
    search = search_c(cfg, 7, svm_pipeline(), x, y, groups, name="deploy", storage=None)
    assert (c, inner_auc) == (search.best_c, search.inner_auc)
    assert len(model.calibrated_classifiers_) == 1  # ensemble=False: one pipeline, one sigmoid
    pipeline = model.calibrated_classifiers_[0].estimator
    assert pipeline.named_steps["svc"].C == c
    assert pipeline.named_steps["scale"].n_samples_seen_ == len(y)  # refitted on every row


def test_probability_is_monotone_in_the_decision_value_and_seeded():
    x, y, groups = _features(1)
    cfg = Svm(c_grid=[0.1, 1.0], inner_splits=3)
    model, _, _ = calibrated_svm(cfg, 0, x, y, groups)
    probability = model.predict_proba(x)[:, 1]
    decision = model.calibrated_classifiers_[0].estimator.decision_function(x)
    assert ((0 <= probability) & (probability <= 1)).all()
    order = np.argsort(decision)
    assert np.all(np.diff(probability[order]) >= -1e-12)
    again, _, _ = calibrated_svm(cfg, 0, x, y, groups)
    np.testing.assert_array_equal(again.predict_proba(x), model.predict_proba(x))
