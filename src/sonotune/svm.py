"""Stage `svm` (FT-SVM): a linear SVM on each fold's fine-tuned features, C chosen by inner cross-validation.

Run as `sonotune svm --dataset D --backbone B --strategy S`, after `finetune`. The classifier is an sklearn
Pipeline (StandardScaler → LinearSVC); AUC uses its decision function.
- `leakage_free`: for outer fold k, the features of fold k's training images (from fold k's model) are the
  only data `GridSearchCV` sees (grouped, stratified inner folds, ROC AUC); fold k's test images are scored once.
- `paper`: the grid search is fitted on the features of the whole dataset (from fold k's model), test fold
  included, as the paper's text reads; fold k's test images are then scored — optimistic by construction.
Writes `runs/D/B/S/svm/oof.csv`, `svm_metrics.json` and `svm_roc.csv`; logs a parent run with fold runs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC
from tqdm.auto import tqdm

from sonotune import tracking
from sonotune.config import Params, flatten
from sonotune.layout import stage_dir
from sonotune.metrics import binary_metrics, summarize
from sonotune.outputs import write_stage_outputs
from sonotune.plots import save_confusion_png, save_roc_png

CLASSIFIER = "svm"


def svm_pipeline(max_iter: int, seed: int) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("svc", LinearSVC(max_iter=max_iter, random_state=seed))])


def fit_c_search(params: Params, x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> GridSearchCV:
    """Grid-search C by grouped, stratified inner CV (ROC AUC) on exactly the rows given."""
    inner = StratifiedGroupKFold(n_splits=params.svm.inner_splits, shuffle=True, random_state=params.seed)
    search = GridSearchCV(
        svm_pipeline(params.svm.max_iter, params.seed),
        {"svc__C": list(params.svm.c_grid)},
        scoring="roc_auc",
        cv=inner,
        refit=True,
    )
    return search.fit(x, y, groups=groups)


def svm_training_rows(protocol: str, folds: np.ndarray, fold: int) -> np.ndarray:
    """Rows the SVM is fitted on for outer fold `fold`: its training images, or everything (paper)."""
    return np.arange(len(folds)) if protocol == "paper" else np.flatnonzero(folds != fold)


def run_svm(params: Params, dataset: str, backbone: str, strategy: int) -> dict:
    import mlflow

    source = stage_dir(dataset, backbone, strategy, "mlp")
    mlp_oof = pd.read_csv(source / "oof.csv", dtype={"group": str})
    features = np.load(source / "features.npz")
    y = mlp_oof["y"].to_numpy()
    groups = mlp_oof["group"].to_numpy()
    folds = mlp_oof["fold"].to_numpy()
    oof = mlp_oof[["path", "group", "label", "y", "fold"]].assign(score=np.nan)
    per_fold, chosen_c = [], []
    run_params = flatten(params.svm, "svm.") | {"seed": params.seed, "protocol": params.protocol}
    with tracking.parent_run(dataset, backbone, strategy, CLASSIFIER, params.protocol, run_params) as parent:
        for fold in tqdm(sorted(set(folds)), desc=f"svm {backbone} {strategy}%", unit="fold"):
            x = features[f"{params.svm.features}_{fold}"]
            train = svm_training_rows(params.protocol, folds, fold)
            test = np.flatnonzero(folds == fold)
            with tracking.fold_run(parent, int(fold)):
                search = fit_c_search(params, x[train], y[train], groups[train])
                score = search.decision_function(x[test])
                oof.loc[test, "score"] = score
                fold_metrics = binary_metrics(y[test], score, 0.0)
                per_fold.append(fold_metrics)
                chosen_c.append(float(search.best_params_["svc__C"]))
                mlflow.log_params({"C": chosen_c[-1]})
                mlflow.log_metrics(fold_metrics | {"inner_cv_auc": float(search.best_score_)})
                with tracking.artifact_dir() as tmp:
                    save_roc_png(tmp / "roc.png", {"SVM": (y[test], score)}, f"fold {fold}")
                    save_confusion_png(tmp / "confusion_matrix.png", y[test], (score >= 0).astype(int), f"fold {fold}")
        summary = summarize(per_fold)
        mlflow.log_metrics(summary)
        write_stage_outputs(dataset, backbone, strategy, CLASSIFIER, oof, per_fold, summary,
                            extra={"chosen_c": chosen_c})
    return summary
