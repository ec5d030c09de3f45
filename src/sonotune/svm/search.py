"""Choosing the linear SVM's C by inner cross-validation: the paper's grid (GridSearchCV) or a seeded Optuna study.

Pure functions over arrays; nothing here knows about stages, files or MLflow. Both searches fit only the rows
they are given, score each C by the mean ROC AUC of the same grouped, stratified inner folds, and return the
pipeline refitted on all given rows with the best C. The estimator is any sklearn Pipeline whose linear SVM
step is named `svc` (default: `svm_pipeline`, StandardScaler → SVC(kernel="linear")).

Why libsvm's SVC and not liblinear's LinearSVC: with ~100 rows and 512–2048 columns the dual problem has one
variable per row, so libsvm solves it exactly (to its tolerance) in well under a second, with the textbook linear
SVM (hinge loss, unpenalised intercept). LinearSVC ran out of its 20 000 iterations on some of the demo's fits (a
ConvergenceWarning each) and was many times slower: the table in docs/manual.md#ft-svm (benchmarks/svm_solvers.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from sonotune.config import Svm
from sonotune.metrics import METRIC_NAMES, binary_metrics

C_PARAM = "svc__C"
SEARCH_COLUMNS = ["trial", "C", "inner_auc_mean", "inner_auc_sd"]


@dataclass(frozen=True)
class CSearch:
    """Outcome of a C search: the refitted pipeline, its C, its inner-CV AUC and every C tried."""

    estimator: Pipeline
    best_c: float
    inner_auc: float
    tried: pd.DataFrame  # SEARCH_COLUMNS, one row per grid value or Optuna trial


def svm_pipeline(class_weight: str = "none") -> Pipeline:
    """StandardScaler → linear SVM (libsvm, run to convergence); `class_weight` "balanced" weighs each class by
    1 / its frequency. Its `coef_` and `intercept_` are the decision function on the standardized features."""
    weights = None if class_weight == "none" else class_weight
    return Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel="linear", class_weight=weights))])


def inner_folds(n_splits: int, seed: int, grouped: bool = True) -> StratifiedGroupKFold | StratifiedKFold:
    """The inner CV: stratified and (unless `grouped` is False: the paper's protocol) grouped, shuffled once by the
    seed, so every C sees the same splits. Ungrouped folds ignore the groups they are given."""
    splitter = StratifiedGroupKFold if grouped else StratifiedKFold
    return splitter(n_splits=n_splits, shuffle=True, random_state=seed)


def grid_search_c(estimator: Pipeline, x, y, groups, c_grid: Sequence[float], cv) -> CSearch:
    """GridSearchCV over `c_grid`, ROC AUC on `cv`'s inner folds of exactly these rows, refit on all of them."""
    search = GridSearchCV(clone(estimator), {C_PARAM: list(c_grid)}, scoring="roc_auc", cv=cv, refit=True,
                          error_score="raise")
    search.fit(x, y, groups=groups)
    results = search.cv_results_
    tried = pd.DataFrame({
        "trial": np.arange(len(c_grid)),
        "C": np.asarray(results[f"param_{C_PARAM}"], dtype=float),
        "inner_auc_mean": results["mean_test_score"],
        "inner_auc_sd": results["std_test_score"],
    })
    return CSearch(search.best_estimator_, float(search.best_params_[C_PARAM]), float(search.best_score_), tried)


def inner_cv_aucs(estimator: Pipeline, c: float, x, y, groups, cv) -> np.ndarray:
    """ROC AUC of the pipeline with this C on each inner fold (the objective both searches share)."""
    model = clone(estimator).set_params(**{C_PARAM: c})
    return cross_val_score(model, x, y, groups=groups, cv=cv, scoring="roc_auc", error_score="raise")


def open_study(storage: str | None, study_name: str, seed: int):
    """Create or load a maximising study with a seeded TPE sampler (`storage` None: in memory)."""
    import optuna

    if storage is not None and storage.startswith("sqlite:"):
        # several workers on one SQLite file wait for the lock instead of failing at once
        storage = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                               sampler=optuna.samplers.TPESampler(seed=seed), load_if_exists=True)


def optuna_search_c(estimator: Pipeline, x, y, groups, cv, c_min: float, c_max: float, n_trials: int,
                    seed: int, storage: str | None, study_name: str,
                    callbacks: Sequence[Callable] = ()) -> CSearch:
    """Add `n_trials` TPE trials over log-uniform C in [c_min, c_max] to the study; refit with its best C.

    With a shared storage the study may hold other workers' trials: the best C is the study's best.
    """
    import optuna

    def objective(trial: "optuna.Trial") -> float:
        aucs = inner_cv_aucs(estimator, trial.suggest_float("C", c_min, c_max, log=True), x, y, groups, cv)
        trial.set_user_attr("inner_auc_sd", float(aucs.std()))
        return float(aucs.mean())

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(storage, study_name, seed)
    study.optimize(objective, n_trials=n_trials, callbacks=list(callbacks))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    tried = pd.DataFrame(
        [(t.number, t.params["C"], t.value, t.user_attrs.get("inner_auc_sd", np.nan)) for t in done],
        columns=SEARCH_COLUMNS,
    )
    best_c = float(study.best_params["C"])
    refit = clone(estimator).set_params(**{C_PARAM: best_c}).fit(x, y)
    return CSearch(refit, best_c, float(study.best_value), tried)


def inner_cv_metrics(estimator: Pipeline, x, y, groups, cv) -> tuple[dict[str, float], np.ndarray]:
    """Every metric of `estimator` scored by inner CV over these rows: mean over folds (counts summed),
    and the cross-validated decision score of each row. With the same `cv`, `auc` equals the search's score."""
    per_fold, scores = [], np.full(len(y), np.nan)
    for fit, held_out in cv.split(x, y, groups):
        score = clone(estimator).fit(x[fit], y[fit]).decision_function(x[held_out])
        scores[held_out] = score
        per_fold.append(binary_metrics(y[held_out], score, 0.0))
    metrics = {name: float(np.mean([fold[name] for fold in per_fold])) for name in METRIC_NAMES}
    counts = {name: int(sum(fold[name] for fold in per_fold)) for name in ("tp", "fp", "tn", "fn")}
    return metrics | counts, scores


def search_c(cfg: Svm, seed: int, estimator: Pipeline, x, y, groups, name: str, storage: str | None,
             callbacks: Sequence[Callable] = (), grouped: bool = True) -> CSearch:
    """C by the search `cfg.search` names (the params' `svm` section): the grid, or `n_trials` Optuna trials in
    study `name` of `storage`; scored on `cfg.inner_splits` inner folds seeded by `seed` (grouped unless not)."""
    cv = inner_folds(cfg.inner_splits, seed, grouped)
    if cfg.search == "grid":
        return grid_search_c(estimator, x, y, groups, cfg.c_grid, cv)
    return optuna_search_c(estimator, x, y, groups, cv, cfg.optuna.c_min, cfg.optuna.c_max, cfg.optuna.n_trials,
                           seed, storage, name, callbacks)
