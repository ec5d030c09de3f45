"""Stage `svm` (FT-SVM): a linear SVM on each outer fold's fine-tuned features, C chosen by inner CV.

Run as `sonotune svm --dataset D --backbone B --strategy S` (or `dvc repro`), after `finetune`, which saved
for every outer fold k the features of every image computed by fold k's best model (`svm.features`: `pooled`,
the GlobalMaxPooling output of the backbone, or `dense`, the head's Dense-512 ReLU activations).

The classifier is an sklearn Pipeline, StandardScaler → LinearSVC; scores are its decision function (AUC), a
score ≥ 0 predicts malignant. C is chosen by `svm.search`:
- `grid`: GridSearchCV over `svm.c_grid` (the paper's {0.1, 1, 10, 100});
- `optuna`: a TPE study seeded by `seed`, `svm.optuna.n_trials` trials of log-uniform C in
  [`c_min`, `c_max`], stored in `svm.optuna.storage` (default: SQLite `runs/D/B/S/svm/optuna.db`, created
  fresh on every run so the stage stays reproducible; a shared URL accumulates the trials of every worker
  and run, and the best C is the study's best). Each trial is an MLflow run nested under its fold's run.
Both score a C by the mean ROC AUC over `svm.inner_splits` grouped, stratified inner folds (seeded, the
same splits for every C), then refit the pipeline with the best C on all the rows the search was given.

`protocol: leakage_free` — for outer fold k the search sees only the features of fold k's training images
(never a test-fold row, not even in its inner validation folds); the refitted pipeline scores fold k's
test images once. Fold metrics are on the test fold; `oof.csv` holds one out-of-fold score per image.
`protocol: paper` — the paper's reading: for outer fold k, the search runs on the features of *every*
image from fold k's model (its CNN was trained on ~80 % of them), and the fold's metrics are the 5-fold
(`inner_splits`) cross-validation scores of the chosen C over the whole dataset, the mean over inner folds
(so the fold's `auc` is the search's own best inner-CV AUC, selection bias included). `oof.csv` then holds
each image's cross-validated score from the model of the outer fold where it is the test image.

Writes `runs/D/B/S/svm/` (oof.csv with the fold's C, c_search.csv with every C tried per fold, optuna.db
with the default storage), `svm_metrics.json` (DVC metrics: per-fold, mean ± sd, chosen C per fold) and
`svm_roc.csv` (DVC plots). MLflow: a parent run (tags classifier=svm, …) with one nested run per fold
carrying C, metrics, ROC / confusion matrix / C-search plots and the fitted pipeline (`mlflow.sklearn`).
"""

from sonotune.svm.stage import run_svm

__all__ = ["run_svm"]
