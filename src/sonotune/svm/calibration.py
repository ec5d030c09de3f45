"""A deployable SVM head: C chosen as the svm stage chooses it, then Platt scaling, so the linear SVM's decision
value becomes a probability. Pure function over arrays; `sonotune.stages.deploy` calls it on the refit network's
features.
"""

from __future__ import annotations

import numpy as np

from sonotune.config import Svm


def calibrated_svm(cfg: Svm, seed: int, features: np.ndarray, y: np.ndarray, groups: np.ndarray):
    """C by the svm stage's grouped inner search (the params' `svm` section `cfg`, seeded by `seed`), then Platt
    scaling on that inner CV's out-of-fold decision values (`ensemble=False`: one pipeline, refit on everything,
    plus one sigmoid). Returns (model, C, inner AUC)."""
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV

    from sonotune.svm.search import inner_folds, search_c, svm_pipeline

    estimator = svm_pipeline(cfg.class_weight)
    search = search_c(cfg, seed, estimator, features, y, groups, name="deploy", storage=None)
    inner = inner_folds(cfg.inner_splits, seed)
    splits = list(inner.split(features, y, groups))  # precomputed: CalibratedClassifierCV routes no groups
    model = CalibratedClassifierCV(clone(search.estimator), method="sigmoid", cv=splits, ensemble=False)
    return model.fit(features, y), search.best_c, search.inner_auc
