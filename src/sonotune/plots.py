"""Figures logged with the runs: ROC curves and confusion matrices (PNG), and ROC points for DVC plots.

Every figure is titled with its configuration (`configuration_title`) and names the positive class
(malignant) in words, where scikit-learn's displays would say "Positive label: 1".
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay, roc_curve  # noqa: E402

from sonotune.vocabulary import CLASS_NAMES  # noqa: E402


def roc_points(y_true: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    fpr, tpr, _ = roc_curve(y_true, score)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr})


POSITIVE = CLASS_NAMES[1]
CLASSIFIER_LABELS = {"mlp": "MLP head", "svm": "linear SVM"}


def configuration_title(dataset: str, backbone: str, strategy, classifier: str) -> str:
    """`busi · vgg16 · 15 % trainable · MLP head`: what a figure shows, as a newcomer reads it."""
    return (f"{dataset} · {backbone} · {strategy} % trainable · "
            f"{CLASSIFIER_LABELS.get(classifier, classifier)}")


def save_roc_png(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
    """One ROC panel with a curve per entry of `curves` (label -> (y_true, score)); the positive class is
    malignant, said on the axes."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for label, (y_true, score) in curves.items():
        RocCurveDisplay.from_predictions(y_true, score, pos_label=1, name=label, ax=ax, plot_chance_level=False)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set_xlabel(f"false positive rate ({CLASS_NAMES[0]} called {POSITIVE})")
    ax.set_ylabel(f"sensitivity ({POSITIVE} found)")
    ax.set_title(f"{title}\nROC, positive class: {POSITIVE}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_confusion_png(path: Path, y_true: np.ndarray, y_pred: np.ndarray, title: str) -> None:
    """Counts of actual × predicted class, the class names on the axes."""
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=[0, 1], display_labels=list(CLASS_NAMES), ax=ax, colorbar=False
    )
    ax.set(xlabel="predicted", ylabel="actual")
    ax.set_title(f"{title}\nconfusion matrix, positive class: {POSITIVE}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
