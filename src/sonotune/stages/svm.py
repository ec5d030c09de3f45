"""Stage `svm` (FT-SVM): a linear SVM on each outer fold's fine-tuned features, C chosen by inner CV.

Run as `sonotune svm --dataset D --backbone B --strategy S` (or `dvc repro`), after `finetune`, which saved
for every outer fold k the features of every image computed by fold k's best model (`svm.features`: `pooled`,
the GlobalMaxPooling output of the backbone, or `dense`, the head's Dense-512 ReLU activations).

The classifier is an sklearn Pipeline, StandardScaler → linear SVM (sklearn SVC, libsvm); scores are its decision
function (AUC), a score ≥ 0 predicts malignant. C is chosen by `svm.search`:
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

Repeated cross-validation: when finetune ran `cv.repeats` R > 1 (its oof.csv has a `repeat` column), every
(repeat, fold) is one outer fold as above, on that repeat's split and features (`outputs.feature_key`), its
inner CV and Optuna sampler seeded with `cv.repeat_seed(seed, repeat)`, its Optuna study named
`…-repeat<r>-fold<k>` for r > 0; oof.csv keeps the `repeat` column (one row per image and repeat), the metrics
JSON's `folds` entries carry `repeat` and `fold`, `chosen_c` lists the C of every (repeat, fold) in order, and
fold runs are tagged `repeat`. With R = 1 everything is as for a single split.

Writes `runs/D/B/S/svm/` (oof.csv with the fold's C, c_search.csv with every C tried per fold, optuna.db
with the default storage), `svm_metrics.json` (DVC metrics: per-fold, mean ± sd, chosen C per fold) and
`svm_roc.csv` (DVC plots). MLflow: a parent run (tags classifier=svm, …) carrying the finetune parent's
configuration params and tags (from `runs/D/B/S/mlp/mlflow.json`) plus the svm.* params that apply, with one nested
run per fold carrying C, metrics, ROC / confusion matrix / C-search plots and the fitted pipeline (`mlflow.sklearn`,
named like the fold run).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sonotune import tracking
from sonotune.config import Params, flatten
from sonotune.cv import repeat_seed, rules
from sonotune.errors import DataError
from sonotune.layout import stage_dir
from sonotune.metrics import summarize
from sonotune.outputs import REPEAT, feature_key, with_repeat, write_stage_outputs
from sonotune.plots import configuration_title, save_confusion_png, save_roc_png
from sonotune.svm.folds import SvmFoldResult, evaluate_fold
from sonotune.svm.search import svm_pipeline
from sonotune.vocabulary import THRESHOLDS

CLASSIFIER = "svm"
STUDY_FILE = "optuna.db"


@dataclass(frozen=True)
class FineTuned:
    """What the finetune stage left for one configuration: one row per image (and repeat), one feature matrix
    per (repeat, fold)."""

    rows: pd.DataFrame  # path, group, label, y, [repeat,] fold (the outer fold where the image is the test image)
    features: dict[tuple[int, int], np.ndarray]  # (repeat, fold) -> features of that repeat's images, fold's model
    record: dict | None = None  # the finetune parent's configuration params and tags (tracking.read_record)

    @property
    def folds(self) -> np.ndarray:
        return self.rows["fold"].to_numpy()

    @property
    def repeated(self) -> bool:
        return REPEAT in self.rows.columns

    def repeat_rows(self, repeat: int) -> np.ndarray:
        """Positions in `rows` of repeat `repeat`'s images (every row of a single split)."""
        return np.flatnonzero(with_repeat(self.rows)[REPEAT].to_numpy() == repeat)


def load_finetuned(dataset: str, backbone: str, strategy: int, layer: str) -> FineTuned:
    """Read `runs/D/B/S/mlp/` (oof.csv, features.npz); DataError when missing or inconsistent."""
    source = stage_dir(dataset, backbone, strategy, "mlp")
    if not (source / "oof.csv").is_file() or not (source / "features.npz").is_file():
        raise DataError(f"{source}: no oof.csv/features.npz — run the finetune stage first "
                        f"(sonotune finetune --dataset {dataset} --backbone {backbone} --strategy {strategy})")
    rows = pd.read_csv(source / "oof.csv", dtype={"group": str})
    rows = rows[[c for c in ("path", "group", "label", "y", REPEAT, "fold") if c in rows.columns]]
    keys = with_repeat(rows)[[REPEAT, "fold"]].drop_duplicates().sort_values([REPEAT, "fold"])
    features = {}
    with np.load(source / "features.npz") as stored:
        for repeat, fold in keys.itertuples(index=False):
            key = feature_key(layer, repeat, fold)
            where = f"repeat {repeat}, fold {fold}" if repeat else f"fold {fold}"
            if key not in stored:
                raise DataError(f"{source / 'features.npz'}: no array '{key}' for svm.features={layer}, "
                                f"{where} (has: {', '.join(sorted(stored.files))})")
            n_rows = int((with_repeat(rows)[REPEAT] == repeat).sum())
            if len(stored[key]) != n_rows:
                raise DataError(f"{source / 'features.npz'}: '{key}' has {len(stored[key])} rows, "
                                f"oof.csv {n_rows}" + (f" in repeat {repeat}" if repeat else ""))
            features[(int(repeat), int(fold))] = stored[key]
    return FineTuned(rows, features, tracking.read_record(source))


def svm_run_params(cfg) -> dict:
    """The svm.* params that apply: the grid under `search: grid`, the Optuna settings under `search: optuna`."""
    flat = flatten(cfg, "svm.")
    unused = "svm.optuna." if cfg.search == "grid" else "svm.c_grid"
    return {k: v for k, v in flat.items() if not k.startswith(unused)}


def parent_params_and_tags(params: Params, dataset: str, record: dict | None) -> tuple[dict, dict]:
    """The finetune parent's configuration params and tags (so MLP and SVM parents compare on the same ones), plus
    the svm.* params that apply, and a fingerprint of both stages' configuration. Without a record (outputs of an
    older finetune), the params this stage knows."""
    own = svm_run_params(params.svm) | {"seed": params.seed, "protocol": params.protocol}
    if record is None:
        return own | {"dataset": dataset}, {}
    tags = dict(record["tags"])
    tags[tracking.FINGERPRINT_TAG] = tracking.derived_fingerprint(tags.get(tracking.FINGERPRINT_TAG, ""), own)
    return record["params"] | own, tags


def study_name(params: Params, dataset: str, backbone: str, strategy: int, fold: int, repeat: int = 0) -> str:
    where = f"repeat{repeat}-fold{fold}" if repeat else f"fold{fold}"
    return f"{dataset}-{backbone}-{strategy}-svm-{params.protocol}-{params.svm.features}-{where}"


def trial_logger(fold_run):
    """An Optuna callback logging each finished trial as an MLflow run nested under the fold's run."""
    import mlflow

    tags = {k: v for k, v in fold_run.data.tags.items() if not k.startswith("mlflow.")}

    def log_trial(study, trial) -> None:
        if trial.value is None:
            return
        with mlflow.start_run(experiment_id=fold_run.info.experiment_id, nested=True,
                              run_name=f"{fold_run.info.run_name}-trial{trial.number}",
                              tags=tags | {"optuna_study": study.study_name, "optuna_trial": str(trial.number)}):
            mlflow.log_params({"C": trial.params["C"]})
            mlflow.log_metrics({"inner_cv_auc": trial.value,
                                "inner_cv_auc_sd": trial.user_attrs.get("inner_auc_sd", float("nan"))})

    return log_trial


def save_c_search_png(path: Path, tried: pd.DataFrame, best_c: float, title: str) -> None:
    """Inner-CV AUC against C (log axis), the chosen C marked."""
    import matplotlib.pyplot as plt

    tried = tried.sort_values("C")
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ax.errorbar(tried["C"], tried["inner_auc_mean"], yerr=tried["inner_auc_sd"], fmt="o-", ms=3, capsize=2)
    ax.axvline(best_c, color="tab:red", linestyle=":", label=f"chosen C = {best_c:.3g}")
    ax.set(xscale="log", xlabel="C", ylabel="inner-CV ROC AUC", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fold_title(run, fold: int, repeat: int) -> str:
    """The title of a fold run's figures: the configuration (from its tags) and the fold."""
    tags = run.data.tags
    where = f"repeat {repeat} fold {fold}" if repeat else f"fold {fold}"
    return f"{configuration_title(tags['dataset'], tags['backbone'], tags['strategy'], CLASSIFIER)}, {where}"


def log_fold(result: SvmFoldResult, y: np.ndarray, x_fit: np.ndarray, run, fold: int, repeat: int,
             search: str) -> None:
    """The fold run's C, metrics, figures (titled `fold_title`) and fitted pipeline."""
    import mlflow

    mlflow.log_params({"C": result.search.best_c, "n_fit_rows": len(result.fit_rows),
                       "n_scored_rows": len(result.scored_rows)})
    mlflow.log_metrics(result.metrics | {"inner_cv_auc": result.search.inner_auc})
    truth, scores = y[result.scored_rows], result.scores
    title = fold_title(run, fold, repeat)
    with tracking.artifact_dir() as tmp:
        save_roc_png(tmp / "roc.png", {"SVM": (truth, scores)}, title)
        save_confusion_png(tmp / "confusion_matrix.png", truth, (scores >= THRESHOLDS[CLASSIFIER]).astype(int), title)
        result.search.tried.to_csv(tmp / "c_search.csv", index=False)
        save_c_search_png(tmp / "c_search.png", result.search.tried, result.search.best_c, f"{title}\nC by {search}")
    log_pipeline(result.search.estimator, x_fit[:5], run)


def log_pipeline(pipeline, sample: np.ndarray, run) -> None:
    """Log the fitted pipeline with mlflow.sklearn (skops format, requirements not inferred: seconds saved),
    named and tagged like its run `run`."""
    import mlflow
    import skops.io
    from mlflow.models import infer_signature

    # skops loads only types it trusts; a caller-supplied step (not sklearn's) is trusted explicitly here,
    # since this process built the object it is about to serialise
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline)) or None
    mlflow.sklearn.log_model(
        pipeline, name=tracking.model_name(run), tags=tracking.model_tags(run),
        signature=infer_signature(sample, pipeline.decision_function(sample)),
        pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
        skops_trusted_types=trusted,
    )


def run_svm(params: Params, dataset: str, backbone: str, strategy: int, estimator=None) -> dict:
    """Run the stage for one configuration; return the summary metrics.

    `estimator`: the pipeline to tune (a Pipeline with a `svc` step); default `svm_pipeline`.
    """
    import mlflow

    cfg = params.svm
    data = load_finetuned(dataset, backbone, strategy, cfg.features)
    estimator = estimator if estimator is not None else svm_pipeline(cfg.class_weight)
    y = data.rows["y"].to_numpy()
    oof = data.rows.assign(C=np.nan, score=np.nan)
    per_fold, chosen_c, tried = [], [], []
    run_params, tags = parent_params_and_tags(params, dataset, data.record)
    with tempfile.TemporaryDirectory() as scratch, \
            tracking.parent_run(dataset, backbone, strategy, CLASSIFIER, params.protocol, run_params,
                                extra_tags=tags) as parent:
        tracking.log_dataset(data.rows.iloc[data.repeat_rows(0)], {"digest": tags.get("dataset_digest")}, dataset)
        default_study = cfg.search == "optuna" and cfg.optuna.storage is None
        storage = f"sqlite:///{Path(scratch) / STUDY_FILE}" if default_study else cfg.optuna.storage
        if cfg.search == "optuna":
            shown = f"sqlite:///{stage_dir(dataset, backbone, strategy, CLASSIFIER) / STUDY_FILE}" \
                if default_study else storage
            mlflow.set_tag("optuna_storage", shown)
        groups = data.rows["group"].to_numpy()
        for repeat, fold in tqdm(sorted(data.features), desc=f"svm {backbone} {strategy}% ({cfg.search})",
                                 unit="fold"):
            rows = data.repeat_rows(repeat)  # this repeat's images: the fold's arrays are indexed within them
            x, folds = data.features[(repeat, fold)], data.folds[rows]
            with tracking.fold_run(parent, fold, repeat) as run:
                callbacks = [trial_logger(mlflow.get_run(run.info.run_id))] if cfg.search == "optuna" else []
                study = study_name(params, dataset, backbone, strategy, fold, repeat)
                result = evaluate_fold(cfg, repeat_seed(params.seed, repeat), params.protocol, estimator, x, y[rows],
                                       groups[rows], folds, fold, study, storage, callbacks)
                log_fold(result, y[rows], x[result.fit_rows], mlflow.get_run(run.info.run_id), fold, repeat,
                         cfg.search)
            test = np.flatnonzero(folds == fold)
            oof.loc[rows[test], "C"] = result.search.best_c
            oof.loc[rows[test], "score"] = \
                result.scores[test] if rules(params.protocol).svm_on_all_images else result.scores
            per_fold.append(result.metrics | ({REPEAT: repeat, "fold": fold} if data.repeated else {}))
            chosen_c.append(result.search.best_c)
            tried.append(result.search.tried.assign(**{REPEAT: repeat, "fold": fold}))
            where = f"repeat {repeat} fold {fold}" if repeat else f"fold {fold}"
            tqdm.write(f"  {where}: C={result.search.best_c:.3g} inner-CV AUC={result.search.inner_auc:.3f} "
                       f"AUC={result.metrics['auc']:.3f}")
        summary = summarize(per_fold)
        tracking.log_summary(summary)  # each fold's C is the param `C` of its fold run
        columns = ([REPEAT] if data.repeated else []) + ["fold", "trial", "C", "inner_auc_mean", "inner_auc_sd"]
        search_table = pd.concat(tried, ignore_index=True)[columns]
        shown = oof[oof[REPEAT] == 0] if data.repeated else oof
        with tracking.artifact_dir() as tmp:
            title = configuration_title(dataset, backbone, strategy, CLASSIFIER)
            save_roc_png(tmp / "roc_pooled.png", {"SVM": (shown["y"], shown["score"])}, f"{title}: pooled out-of-fold")
            search_table.to_csv(tmp / "c_search.csv", index=False)
        search_file = Path(scratch) / "c_search.csv"
        search_table.to_csv(search_file, index=False)
        files = {"c_search.csv": search_file} | ({STUDY_FILE: Path(scratch) / STUDY_FILE} if default_study else {})
        write_stage_outputs(dataset, backbone, strategy, CLASSIFIER, oof, per_fold, summary,
                            extra={"chosen_c": chosen_c}, files=files)
    return summary
