"""Helpers for the FT-SVM tests: a synthetic finetune output (no CNN trained) and an sklearn-compatible step
that records every row a pipeline is fitted on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.pipeline import Pipeline

from sonotune import tracking
from sonotune.config import parse_params
from sonotune.cv import outer_folds
from sonotune.layout import stage_dir
from sonotune.svm.search import svm_pipeline
from tests.workspace import tiny_params

DATASET, BACKBONE, STRATEGY = "phantom", "vgg16", 15
N_FOLDS = 3


def row_key(row: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(row, dtype=np.float32).tobytes()).hexdigest()


class FitRecorder(TransformerMixin, BaseEstimator):
    """Passes X through unchanged; appends a digest of each row it is fitted on to `log_file`.

    A file (not an attribute) because GridSearchCV and cross-validation fit clones that are thrown away."""

    def __init__(self, log_file: str = ""):
        self.log_file = log_file

    def fit(self, x, y=None):
        with open(self.log_file, "a") as log:
            log.writelines(row_key(row) + "\n" for row in np.asarray(x))
        return self

    def transform(self, x):
        return x


def recording_pipeline(log_file: Path) -> Pipeline:
    return Pipeline([("record", FitRecorder(str(log_file)))] + svm_pipeline().steps)


def fitted_rows(log_file: Path, features: np.ndarray) -> set[int]:
    """Indices of the rows of `features` the recorder saw in a fit."""
    index = {row_key(row): i for i, row in enumerate(features)}
    return {index[key] for key in log_file.read_text().split() if key in index}


def svm_params(**overrides):
    """Tiny params with svm overrides (dotted keys), validated."""
    return parse_params(tiny_params(**overrides))


def write_finetune_output(root: Path, n_benign: int = 40, n_malignant: int = 20, dim: int = 16,
                          seed: int = 0) -> dict[int, np.ndarray]:
    """A synthetic `runs/phantom/vgg16/15/mlp/` under `root`: grouped images (pairs share a group), grouped
    stratified folds, and per fold a feature matrix whose first columns carry the class. Returns the folds'
    test indices."""
    rng = np.random.default_rng(seed)
    y = np.array([0] * n_benign + [1] * n_malignant)
    groups = np.array([f"g{i // 2}" for i in range(len(y))])
    folds = np.full(len(y), -1)
    tests = {}
    for k, (_, test) in enumerate(outer_folds(y, groups, N_FOLDS, seed=42)):
        folds[test] = k
        tests[k] = test
    rows = pd.DataFrame({"path": [f"img{i}.png" for i in range(len(y))], "group": groups,
                         "label": np.where(y == 1, "malignant", "benign"), "y": y, "fold": folds,
                         "score": rng.random(len(y))})
    arrays = {}
    for k in range(N_FOLDS):
        for layer in ("pooled", "dense"):
            x = rng.normal(size=(len(y), dim)).astype(np.float32)
            x[:, :3] += 1.2 * y[:, None]
            arrays[f"{layer}_{k}"] = x
    out = root / stage_dir(DATASET, BACKBONE, STRATEGY, "mlp")
    out.mkdir(parents=True)
    rows.to_csv(out / "oof.csv", index=False)
    np.savez(out / "features.npz", **arrays)
    tracking.write_record(out, RECORD_PARAMS, RECORD_TAGS)  # what the finetune parent logged
    return tests


# the configuration params and tags of write_finetune_output's (imagined) finetune parent run
RECORD_PARAMS = {"finetune.epochs": 3, "finetune.input_size": 32, "cv.n_splits": N_FOLDS, "dataset": DATASET}
RECORD_TAGS = {"dataset_digest": "d1g3st", "dataset_n_images": "60", "sonotune.fingerprint": "mlpfingerprint"}
