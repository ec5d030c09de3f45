"""Stage outputs shared by `finetune` and `svm`: the folder (oof.csv, optional arrays), the metrics JSON and
the pooled ROC points (outputs the report reads; dvc.yaml's top-level metrics and plots are the report's). The
folder is built beside its target and moved into place last, so a crash never leaves a half-written output.
`write_plot_data` adds per-fold plot data:
`<classifier>_roc_folds.csv` (fold, fpr, tpr; fold "pooled" = all out-of-fold scores) and
`<classifier>_confusion.csv` (one row per image: fold, actual, predicted, for DVC's confusion template).

Repeated cross-validation (`cv.repeats` R > 1): `oof.csv` holds one row per (repeat, image), repeat by
repeat, with a `repeat` column before `fold`; with R = 1 it has no `repeat` column (the file of a single split,
unchanged), which readers take as repeat 0 (`with_repeat`). Per-fold feature arrays are named by `feature_key`:
`<layer>_<fold>` for repeat 0 (the single split's names), `<layer>_repeat<r>_<fold>` for repeat r > 0. The ROC
and confusion plot data show repeat 0 (the first split); the metrics JSON covers every repeat.
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

REPEAT = "repeat"  # oof.csv's column naming the repeat of repeated cross-validation (absent when R = 1)


def feature_key(layer: str, repeat: int, fold: int) -> str:
    """Name of fold `fold`'s feature array of `layer` in features.npz (repeat 0 keeps the single split's name)."""
    return f"{layer}_{fold}" if repeat == 0 else f"{layer}_{REPEAT}{repeat}_{fold}"


def with_repeat(oof: pd.DataFrame) -> pd.DataFrame:
    """`oof` with its `repeat` column, 0 everywhere when the file had none (a single split)."""
    return oof if REPEAT in oof.columns else oof.assign(**{REPEAT: 0})


def first_repeat(oof: pd.DataFrame) -> pd.DataFrame:
    """The rows of repeat 0 (every row of a single split)."""
    return oof if REPEAT not in oof.columns else oof[oof[REPEAT] == 0]


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
    shown = first_repeat(oof)
    roc_points(shown["y"], shown["score"]).to_csv(roc_file(dataset, backbone, strategy, classifier), index=False)


def write_plot_data(dataset, backbone, strategy, classifier, oof: pd.DataFrame, threshold: float) -> None:
    """Per-fold and pooled ROC points, and per-image (actual, predicted) rows for the confusion matrix (of
    repeat 0 when `oof` holds several repeats)."""
    oof = first_repeat(oof)
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
