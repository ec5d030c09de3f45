"""Stage `finetune`: one (dataset, backbone, strategy) across the folds, with the paper's MLP head.

Run as `sonotune finetune --dataset D --backbone B --strategy S`. Per fold: build the backbone, freeze its
first layers per the strategy, train with the epoch chosen on the validation split (or on the test fold
under `protocol: paper`), predict the test fold once, and extract the pooled and Dense-512 features of every
image for the SVM stage. Writes `runs/D/B/S/mlp/` (oof.csv, features.npz), `mlp_metrics.json` (DVC metrics),
`mlp_roc.csv`, `mlp_roc_folds.csv` and `mlp_confusion.csv` (DVC plots); logs a parent MLflow run with one
nested run per fold (metrics, per-epoch curves as steps, ROC and confusion PNGs, the model per
`finetune.log_models`).

Resumable: each finished fold is persisted in a `FoldStore` (outside DVC's outputs); a rerun after a crash
resumes the same MLflow parent run and trains only the missing folds. Every fold is seeded with
`seed + fold`, so a fold's result does not depend on whether earlier folds ran in the same process.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sonotune import tracking
from sonotune.config import Params, flatten
from sonotune.cv import Fold, fold_plan
from sonotune.data.manifest import manifest_digest
from sonotune.data.prepared import dataset_info_if_prepared
from sonotune.gradcam import gradcam_maps, layer_for, resize_map, save_overlay
from sonotune.metrics import METRIC_NAMES, binary_metrics, summarize
from sonotune.models.head import inference_copy
from sonotune.models.training import PrefixCache, better, predict_outputs, train_fold
from sonotune.outputs import write_plot_data, write_stage_outputs
from sonotune.plots import save_confusion_png, save_roc_png
from sonotune.resume import FoldStore, fingerprint, resume_dir
from sonotune.stages.inputs import TrainingInputs, load_training_inputs
from sonotune.vocabulary import CLASS_NAMES, THRESHOLDS

CLASSIFIER = "mlp"
THRESHOLD = THRESHOLDS[CLASSIFIER]


@dataclass
class FinishedFold:
    """What a finished fold leaves behind (persisted by the FoldStore, so a resumed run can rebuild outputs)."""

    fold: int
    run_id: str
    metrics: dict
    best_epoch: int  # 0-based
    monitored: float  # best value of finetune.monitor (picks the fold whose model `log_models: best` keeps)
    seconds: float
    score: np.ndarray  # test-fold probabilities of malignant
    pooled: np.ndarray  # features of every image
    dense: np.ndarray

    def record(self) -> dict:
        return {"run_id": self.run_id, "metrics": self.metrics, "best_epoch": self.best_epoch,
                "monitored": self.monitored, "seconds": self.seconds}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"score": self.score, "pooled": self.pooled, "dense": self.dense}

    @classmethod
    def load(cls, store: FoldStore, fold: int, record: dict) -> "FinishedFold":
        fields = {k: record[k] for k in ("run_id", "metrics", "best_epoch", "monitored", "seconds")}
        return cls(fold=fold, **fields, **store.load_arrays(fold))


def _log_fold_curves_and_figures(fold: Fold, history: dict, result: FinishedFold, y_test: np.ndarray) -> None:
    import mlflow

    for step in range(len(history.get("loss", []))):
        mlflow.log_metrics({f"epoch_{k}": float(v[step]) for k, v in history.items()}, step=step)
    mlflow.log_metrics(result.metrics | {"best_epoch": result.best_epoch, "best_monitored": result.monitored})
    with tracking.artifact_dir() as tmp:
        save_roc_png(tmp / "roc.png", {"MLP": (y_test, result.score)}, f"fold {fold.index}")
        save_confusion_png(tmp / "confusion_matrix.png", y_test, (result.score >= THRESHOLD).astype(int),
                           f"fold {fold.index}")


def log_study_overlays(classifier, backbone: str, x: np.ndarray, images: np.ndarray, rows: np.ndarray,
                       y: np.ndarray, alpha: float = 0.4) -> None:
    """Log Grad-CAM overlays of images `rows` (MLP head) to the active MLflow run, under `gradcam/`.

    `x` holds the preprocessed inputs, `images` the same images as uint8 (what the overlay is drawn on).
    """
    if len(rows) == 0:
        return
    maps = gradcam_maps(classifier, layer_for(backbone, classifier), x[rows])
    probabilities = classifier.predict(x[rows], verbose=0)[:, 1]
    with tracking.artifact_dir() as tmp:
        for row, cam, probability in zip(rows, maps, probabilities):
            image = np.asarray(images[row])
            save_overlay(tmp / "gradcam" / f"image{row:05d}_{CLASS_NAMES[int(y[row])]}_p{probability:.2f}.png", image,
                         resize_map(cam, *image.shape[:2]), alpha)


def run_fold(params: Params, backbone: str, strategy: int, data: TrainingInputs, fold: Fold, parent,
             store: FoldStore, best_so_far: FinishedFold | None, cache: PrefixCache | None) -> FinishedFold:
    """Train, predict, log and persist one fold; the record is written only after its MLflow run is closed."""
    import mlflow

    x, y = data.x, data.y
    started = time.perf_counter()
    with tracking.fold_run(parent, fold.index) as child:
        model, history, best_epoch, monitored = train_fold(params.finetune, params.seed, backbone, strategy, x, y,
                                                           fold, cache)
        # one pass over every image: test-fold probabilities and the SVM's features together
        activations = predict_outputs(model, x, cache)
        score = activations["probabilities"][fold.test, 1].astype(np.float64)
        result = FinishedFold(
            fold=fold.index, run_id=child.info.run_id,
            metrics=binary_metrics(y[fold.test], score, THRESHOLD), best_epoch=best_epoch, monitored=monitored,
            seconds=0.0, score=score,
            pooled=activations["pooled"].astype(np.float32), dense=activations["dense"].astype(np.float32),
        )
        _log_fold_curves_and_figures(fold, history, result, y[fold.test])
        if params.gradcam.study_images:  # Grad-CAM of the first test images (gradcam.py)
            log_study_overlays(model, backbone, x, data.images, fold.test[:params.gradcam.study_images], y,
                               params.gradcam.alpha)
        if params.finetune.log_models == "all":
            tracking.log_keras_model(inference_copy(model), x[:2])
        result.seconds = time.perf_counter() - started
        mlflow.log_metric("fold_seconds", result.seconds)
    if params.finetune.log_models == "best":
        if best_so_far is None or better(params.finetune.monitor, monitored, best_so_far.monitored):
            inference_copy(model).save(store.model_path(fold.index))
    store.save_fold(fold.index, result.record(), result.arrays())
    store.keep_only_model(_best_fold(params.finetune.monitor, [r for r in (best_so_far, result) if r]).fold)
    del model
    return result


def _best_fold(monitor: str, results: list[FinishedFold]) -> FinishedFold:
    best = results[0]
    for result in results[1:]:
        if better(monitor, result.monitored, best.monitored):
            best = result
    return best


def _log_best_model(store: FoldStore, best: FinishedFold, example: np.ndarray) -> None:
    import keras
    import mlflow

    model = keras.saving.load_model(store.model_path(best.fold))
    with tracking.resumed_run(best.run_id):
        tracking.log_keras_model(model, example)
    mlflow.set_tag("best_fold", str(best.fold))


def fold_line(result: FinishedFold, epochs: int) -> str:
    m = result.metrics
    return (f"  fold {result.fold}: auc={m['auc']:.3f} acc={m['accuracy']:.3f} sens={m['recall']:.3f} "
            f"spec={m['specificity']:.3f} best_epoch={result.best_epoch + 1}/{epochs} {result.seconds:.1f}s")


def summary_table(title: str, results: list[FinishedFold], summary: dict, pooled: dict) -> str:
    """A plain-text table: one row per fold, then mean ± sd and the pooled out-of-fold metrics."""
    shown = ("auc", "accuracy", "recall", "specificity", "precision", "f1", "mcc")
    header = f"{'fold':>11} " + " ".join(f"{name[:11]:>11}" for name in shown) + f" {'best ep':>7} {'time s':>7}"
    rows = [title, header]
    for r in results:
        rows.append(f"{r.fold:>11} " + " ".join(f"{r.metrics[n]:>11.3f}" for n in shown)
                    + f" {r.best_epoch + 1:>7} {r.seconds:>7.1f}")
    rows.append(f"{'mean ± sd':>11} " + " ".join(
        f"{summary[n + '_mean']:>5.3f}±{summary[n + '_sd']:<5.3f}" for n in shown))
    rows.append(f"{'pooled':>11} " + " ".join(f"{pooled[n]:>11.3f}" for n in shown))
    return "\n".join(rows)


def configuration_key(params: Params, dataset: str, backbone: str, strategy: int, manifest, size: int) -> str:
    """Fingerprint of everything a fold's result depends on: params, data and configuration."""
    return fingerprint({
        "dataset": dataset, "backbone": backbone, "strategy": strategy, "input_size": size,
        "seed": params.seed, "protocol": params.protocol, "cv": params.cv.model_dump(),
        "finetune": params.finetune.model_dump(), "prepare": params.prepare.model_dump(),
        "manifest": manifest_digest(manifest),
    })


def _open_parent(params: Params, dataset: str, backbone: str, strategy: int, run_params: dict, store: FoldStore):
    """The parent run context: the stored one resumed when it still exists, else a new one."""
    tracking.configure()
    tracking.fail_run_tree(store.discarded_parent_run_id)
    resumed = tracking.resumable_run_id(store.parent_run_id)
    if resumed is None and store.done():
        store.clear()  # folds without their MLflow runs cannot be resumed faithfully: start over
        store = FoldStore.open(store.root, store.key)
    tags = tracking.dataset_tags(dataset_info_if_prepared(dataset)) | {tracking.FINGERPRINT_TAG: store.key}
    context = tracking.parent_run(dataset, backbone, strategy, CLASSIFIER, params.protocol, run_params,
                                  run_id=resumed, extra_tags=tags)
    return context, store


def run_finetune(params: Params, dataset: str, backbone: str, strategy: int) -> dict:
    """Train every missing fold, write the stage outputs, log to MLflow; return the summary metrics."""
    import keras
    import mlflow

    data = load_training_inputs(params.finetune, dataset, backbone)  # a config error stops here: no run, no store
    manifest, size = data.manifest, data.input_size
    folds = fold_plan(data.y, data.groups, params.protocol, params.cv.n_splits, params.cv.val_fraction, params.seed)
    monitor = params.finetune.monitor
    cache = PrefixCache() if params.finetune.prefix_cache else None

    store = FoldStore.open(resume_dir(dataset, backbone, strategy, CLASSIFIER),
                      configuration_key(params, dataset, backbone, strategy, manifest, size))
    run_params = flatten(params.finetune, "finetune.") | flatten(params.cv, "cv.") | {
        "seed": params.seed, "protocol": params.protocol, "input_size": size, "dataset": dataset,
    }
    parent_context, store = _open_parent(params, dataset, backbone, strategy, run_params, store)
    title = f"{dataset} {backbone} {strategy}%"
    with parent_context as parent:
        store.set_parent_run_id(parent.info.run_id)
        tracking.fail_stale_runs(dataset, store.key, keep=parent.info.run_id)
        results = {k: FinishedFold.load(store, k, record) for k, record in store.done().items()}
        tracking.discard_unfinished_folds(parent, keep={r.run_id for r in results.values()})
        if results:
            tqdm.write(f"{title}: resuming, folds {sorted(results)} already done")
        bar = tqdm(total=len(folds), initial=len(results), desc=title, unit="fold")
        for fold in folds:
            if fold.index in results:
                continue
            best = _best_fold(monitor, list(results.values())) if results else None
            results[fold.index] = run_fold(params, backbone, strategy, data, fold, parent, store, best, cache)
            tqdm.write(fold_line(results[fold.index], params.finetune.epochs))
            bar.update()
            keras.backend.clear_session()
            gc.collect()
        bar.close()

        ordered = [results[fold.index] for fold in folds]
        oof = manifest[["path", "group", "label"]].assign(y=data.y, fold=-1, score=np.nan)
        for fold, result in zip(folds, ordered):
            oof.loc[fold.test, "fold"] = fold.index
            oof.loc[fold.test, "score"] = result.score
        features = {f"{kind}_{r.fold}": getattr(r, kind) for r in ordered for kind in ("pooled", "dense")}
        per_fold = [r.metrics | {"best_epoch": r.best_epoch, "seconds": r.seconds} for r in ordered]
        summary = summarize(per_fold)
        pooled = binary_metrics(oof["y"].to_numpy(), oof["score"].to_numpy(), THRESHOLD)
        mlflow.log_metrics(summary | {f"pooled_{n}": pooled[n] for n in METRIC_NAMES}
                           | {"fold_seconds_mean": float(np.mean([r.seconds for r in ordered]))})
        if params.finetune.log_models == "best":
            best = _best_fold(monitor, ordered)
            _log_best_model(store, best, data.x[:2])
        write_stage_outputs(dataset, backbone, strategy, CLASSIFIER, oof, per_fold, summary, features,
                            extra={"pooled": pooled})
        write_plot_data(dataset, backbone, strategy, CLASSIFIER, oof, THRESHOLD)
        table = summary_table(title, ordered, summary, pooled)
        _log_configuration_figures(oof, table)
        tqdm.write(table)
    store.clear()
    return summary


def _log_configuration_figures(oof: pd.DataFrame, table: str) -> None:
    """Parent-run artifacts: ROC of every fold and pooled, pooled confusion matrix, the summary table."""
    with tracking.artifact_dir() as tmp:
        curves = {f"fold {k}": (part["y"], part["score"]) for k, part in oof.groupby("fold")}
        curves["pooled"] = (oof["y"], oof["score"])
        save_roc_png(tmp / "roc_pooled.png", curves, "folds and pooled out-of-fold")
        save_confusion_png(tmp / "confusion_matrix_pooled.png", oof["y"], (oof["score"] >= THRESHOLD).astype(int),
                           "pooled out-of-fold")
        (tmp / "summary.txt").write_text(table + "\n")
