"""Figures logged with the runs: ROC curves and confusion matrices (PNG), and ROC points for DVC plots."""

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


def save_roc_png(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
    """One ROC panel with a curve per entry of `curves` (label -> (y_true, score))."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for label, (y_true, score) in curves.items():
        RocCurveDisplay.from_predictions(y_true, score, name=label, ax=ax, plot_chance_level=False)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_confusion_png(path: Path, y_true: np.ndarray, y_pred: np.ndarray, title: str) -> None:
    fig, ax = plt.subplots(figsize=(3.6, 3.4))
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=[0, 1], display_labels=list(CLASS_NAMES), ax=ax, colorbar=False
    )
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
