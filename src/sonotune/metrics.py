"""Binary classification metrics (sklearn) for one fold, and their mean ± sd over folds."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

METRIC_NAMES = ("accuracy", "precision", "recall", "specificity", "f1", "balanced_accuracy", "mcc", "auc")


def binary_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Metrics of scores against 0/1 labels; `score >= threshold` predicts malignant (label 1)."""
    y_true = np.asarray(y_true)
    y_pred = (np.asarray(score) >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    return {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "precision": skm.precision_score(y_true, y_pred, zero_division=0),
        "recall": skm.recall_score(y_true, y_pred, zero_division=0),
        "specificity": tn / (tn + fp) if tn + fp else 0.0,
        "f1": skm.f1_score(y_true, y_pred, zero_division=0),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
        "mcc": skm.matthews_corrcoef(y_true, y_pred),
        "auc": skm.roc_auc_score(y_true, score) if len(np.unique(y_true)) == 2 else float("nan"),
    } | {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)}


def summarize(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """`<metric>_mean` and `<metric>_sd` (sample sd, ddof=1) over folds."""
    summary = {}
    for name in METRIC_NAMES:
        values = np.array([fold[name] for fold in per_fold], dtype=float)
        summary[f"{name}_mean"] = float(np.nanmean(values))
        summary[f"{name}_sd"] = float(np.nanstd(values, ddof=1)) if len(values) > 1 else 0.0
    return summary
