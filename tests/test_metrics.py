import numpy as np
import pytest
from sklearn import metrics as skm

from sonotune.metrics import binary_metrics, summarize


def test_metrics_match_sklearn_on_known_predictions():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 0, 1, 0])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.2, 0.05, 0.6, 0.5])
    m = binary_metrics(y, score, threshold=0.5)
    pred = (score >= 0.5).astype(int)
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, score))
    assert m["accuracy"] == pytest.approx(0.7)  # 7 of 10 by hand
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred))
    assert m["recall"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 2, 4, 1)


def test_summary_is_mean_and_sample_sd():
    folds = [binary_metrics(np.array([0, 1, 0, 1]), np.array(s), 0.5) for s in
             ([0.1, 0.9, 0.2, 0.8], [0.6, 0.4, 0.2, 0.8])]
    summary = summarize(folds)
    # by hand: fold 1 ranks every malignant above every benign (AUC 1); fold 2 ranks 3 of 4 pairs right (0.75)
    assert summary["auc_mean"] == pytest.approx(0.875)
    assert summary["auc_sd"] == pytest.approx(np.std([1.0, 0.75], ddof=1))


def test_metrics_match_sklearn_on_random_predictions():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    score = np.clip(y * 0.3 + rng.random(200) * 0.7, 0, 1)
    m = binary_metrics(y, score, threshold=0.5)
    pred = (score >= 0.5).astype(int)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(y, score))


def test_auc_is_nan_when_a_fold_has_one_class():
    assert np.isnan(binary_metrics(np.zeros(4, int), np.array([0.1, 0.2, 0.7, 0.9]), 0.5)["auc"])
