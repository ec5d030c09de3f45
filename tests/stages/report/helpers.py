"""Synthetic outputs of the `finetune` and `svm` stages for the report's tests, and the small params they use."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sonotune.config import parse_params
from sonotune.metrics import binary_metrics, summarize
from sonotune.outputs import write_stage_outputs
from sonotune.vocabulary import THRESHOLDS
from tests.workspace import tiny_params

N_IMAGES, N_FOLDS = 120, 3


def report_params(backbones=("vgg16", "resnet50"), strategies=(0, 15, 50), **report_cfg):
    raw = tiny_params(**{"study.backbones": list(backbones), "study.strategies": list(strategies)})
    raw["report"] = {"n_bootstrap": 200, "log_to_mlflow": False} | report_cfg
    return parse_params(raw)


def fake_study(params, quality: dict | None = None, shift: dict | None = None, repeats: int = 1) -> None:
    """Stage outputs as `finetune` and `svm` write them, for scores whose signal grows with `quality`; `shift`
    moves a configuration's raw scores (a large negative shift calls every image benign). With `repeats` > 1,
    as `cv.repeats` writes them: repeat r re-splits the groups and retrains (fresh noise), oof.csv gets a
    `repeat` column and every per-fold metrics entry its `repeat`."""
    rng = np.random.default_rng(0)
    group = np.arange(N_IMAGES) // 2  # two images per group, one class per group, both classes in every fold
    y = (group % 5 < 2).astype(int)
    base = pd.DataFrame({"path": [f"img{i}.png" for i in range(N_IMAGES)], "group": [f"g{g}" for g in group],
                         "label": np.where(y, "malignant", "benign"), "y": y})
    for dataset in params.study.datasets:
        for backbone in params.study.backbones:
            for strategy in params.study.strategies:
                for classifier in ("mlp", "svm"):
                    signal_ = (quality or {}).get((backbone, strategy, classifier), 0.5 + strategy / 50)
                    offset = (shift or {}).get((backbone, strategy, classifier), 0)
                    threshold = THRESHOLDS[classifier]
                    parts, per_fold = [], []
                    for repeat in range(repeats):
                        folds = (group // 5 + repeat) % N_FOLDS if repeat else group % N_FOLDS
                        raw = signal_ * y + rng.normal(size=N_IMAGES) + offset
                        score = 1 / (1 + np.exp(-raw)) if classifier == "mlp" else raw
                        parts.append(base.assign(fold=folds, score=score, **({"repeat": repeat} if repeats > 1 else {})))
                        per_fold += [binary_metrics(y[folds == k], score[folds == k], threshold)
                                     | ({"repeat": repeat, "fold": k} if repeats > 1 else {}) for k in range(N_FOLDS)]
                    extra = {"chosen_c": [1.0, 10.0, 0.1] * repeats} if classifier == "svm" else None
                    write_stage_outputs(dataset, backbone, strategy, classifier, pd.concat(parts, ignore_index=True),
                                        per_fold, summarize(per_fold), extra=extra)
