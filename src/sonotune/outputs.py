"""Stage outputs shared by `finetune` and `svm`: the folder (oof.csv, optional arrays), the DVC metrics JSON
and the ROC points for DVC plots. The folder is built beside its target and moved into place last, so a
crash never leaves a half-written output. `write_plot_data` adds the per-fold data behind the DVC plots:
`<classifier>_roc_folds.csv` (fold, fpr, tpr; fold "pooled" = all out-of-fold scores) and
`<classifier>_confusion.csv` (one row per image: fold, actual, predicted, for DVC's confusion template).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from sonotune.layout import config_dir, metrics_file, roc_file, stage_dir, staged_dir
from sonotune.plots import roc_points
from sonotune.vocabulary import CLASS_NAMES



def roc_folds_file(dataset: str, backbone: str, strategy: int, classifier: str):
    return config_dir(dataset, backbone, strategy) / f"{classifier}_roc_folds.csv"


def confusion_file(dataset: str, backbone: str, strategy: int, classifier: str):
    return config_dir(dataset, backbone, strategy) / f"{classifier}_confusion.csv"


def write_stage_outputs(dataset, backbone, strategy, classifier, oof: pd.DataFrame, per_fold, summary,
                        arrays: dict[str, np.ndarray] | None = None, extra: dict | None = None,
                        files: dict[str, Path] | None = None) -> None:
    """Write the stage's folder (oof.csv [+ features.npz] [+ `files`, name -> existing file moved in]),
    metrics JSON and ROC CSV, folder last-moved."""
    with staged_dir(stage_dir(dataset, backbone, strategy, classifier)) as staging:
        oof.to_csv(staging / "oof.csv", index=False)
        if arrays:
            np.savez(staging / "features.npz", **arrays)
        for name, path in (files or {}).items():
            shutil.move(path, staging / name)
    metrics = {"mean": summary, "folds": per_fold} | (extra or {})
    metrics_file(dataset, backbone, strategy, classifier).write_text(json.dumps(metrics, indent=2) + "\n")
    roc_points(oof["y"], oof["score"]).to_csv(roc_file(dataset, backbone, strategy, classifier), index=False)


def write_plot_data(dataset, backbone, strategy, classifier, oof: pd.DataFrame, threshold: float) -> None:
    """Per-fold and pooled ROC points, and per-image (actual, predicted) rows for the confusion matrix."""
    parts = [roc_points(part["y"], part["score"]).assign(fold=str(k)) for k, part in oof.groupby("fold")]
    parts.append(roc_points(oof["y"], oof["score"]).assign(fold="pooled"))
    roc = pd.concat(parts, ignore_index=True)[["fold", "fpr", "tpr"]]
    roc.to_csv(roc_folds_file(dataset, backbone, strategy, classifier), index=False)
    confusion = pd.DataFrame({
        "fold": oof["fold"].to_numpy(),
        "actual": np.array(CLASS_NAMES)[oof["y"].to_numpy().astype(int)],
        "predicted": np.array(CLASS_NAMES)[(oof["score"].to_numpy() >= threshold).astype(int)],
    })
    confusion.to_csv(confusion_file(dataset, backbone, strategy, classifier), index=False)
