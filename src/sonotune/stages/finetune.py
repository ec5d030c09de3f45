"""Stage `finetune`: one (dataset, backbone, strategy) across the folds, with the paper's MLP head.

Run as `sonotune finetune --dataset D --backbone B --strategy S`. Per fold: build the backbone, freeze its
first layers per the strategy, train with the epoch chosen on the validation split (or on the test fold
under `protocol: paper`), predict the test fold once, and extract the pooled and Dense-512 features of every
image for the SVM stage. Writes `runs/D/B/S/mlp/` (oof.csv, features.npz), `mlp_metrics.json` (DVC metrics),
`mlp_roc.csv`, `mlp_roc_folds.csv` and `mlp_confusion.csv` (DVC plots); logs a parent MLflow run with one
nested run per fold (metrics, per-epoch curves as steps, ROC and confusion PNGs, the model per
`finetune.log_models`).

Repeated cross-validation (`cv.repeats: R`): R splits of the images (repeat r seeded with seed + 1000·r,
`cv.repeat_seed`), every fold of every repeat trained; fold runs are tagged `repeat` and `fold`. With R > 1,
oof.csv has one row per (repeat, image) and a `repeat` column, features.npz one array per (repeat, fold)
(`outputs.feature_key`), and the metrics JSON's `folds` entries carry `repeat` and `fold`; its `mean` is over
all R × k folds and its `pooled` the mean over repeats of each repeat's pooled out-of-fold metrics (with
`pooled_repeats`, one per repeat). With R = 1 every output is the single split's, as before repeats existed.

Training goes through `models.training.iter_train_folds` (the batch interface: all missing folds × repeats of
the configuration), which yields each trained fold; the stage persists it before asking for the next.
Resumable: each finished fold is persisted in a `FoldStore` (outside DVC's outputs), keyed by (repeat, fold); a
rerun after a crash resumes the same MLflow parent run and trains only the missing folds. Every fold is seeded
with `seed + 1000·repeat + fold` (`training.fold_seed`), so a fold's result does not depend on whether other
folds ran in the same process.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sonotune import tracking
from sonotune.config import Params, flatten
from sonotune.cv import Fold, fold_plan
from sonotune.data.manifest import manifest_digest
from sonotune.data.prepared import dataset_info_if_prepared
from sonotune.gradcam import gradcam_maps, layer_for, map_verdict, resize_map, save_figure, too_small
from sonotune.metrics import METRIC_NAMES, binary_metrics, summarize
from sonotune.models.head import inference_copy
from sonotune.models.training import PrefixCache, TrainedFold, better, iter_train_folds, predict_outputs
from sonotune.outputs import REPEAT, feature_key, write_plot_data, write_stage_outputs
from sonotune.plots import configuration_title, save_confusion_png, save_roc_png
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
    repeat: int = 0  # of repeated cross-validation

    @property
    def key(self) -> tuple[int, int]:
        return (self.repeat, self.fold)

    def record(self) -> dict:
        return {"run_id": self.run_id, "metrics": self.metrics, "best_epoch": self.best_epoch,
                "monitored": self.monitored, "seconds": self.seconds}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"score": self.score, "pooled": self.pooled, "dense": self.dense}

    @classmethod
    def load(cls, store: FoldStore, key: tuple[int, int], record: dict) -> "FinishedFold":
        fields = {k: record[k] for k in ("run_id", "metrics", "best_epoch", "monitored", "seconds")}
        return cls(fold=key[1], repeat=key[0], **fields, **store.load_arrays(key))


def _log_fold_curves_and_figures(fold: Fold, history: dict, result: FinishedFold, y_test: np.ndarray,
                                 title: str) -> None:
    import mlflow

    for step in range(len(history.get("loss", []))):
        mlflow.log_metrics({f"epoch_{k}": float(v[step]) for k, v in history.items()}, step=step)
    mlflow.log_metrics(result.metrics | {"best_epoch": result.best_epoch, "best_monitored": result.monitored})
    with tracking.artifact_dir() as tmp:
        save_roc_png(tmp / "roc.png", {"MLP": (y_test, result.score)}, title)
        save_confusion_png(tmp / "confusion_matrix.png", y_test, (result.score >= THRESHOLD).astype(int), title)


def log_study_overlays(classifier, backbone: str, x: np.ndarray, images: np.ndarray, rows: np.ndarray,
                       y: np.ndarray, alpha: float = 0.4, title: str = "") -> None:
    """Log Grad-CAM figures of images `rows` (MLP head) to the active MLflow run, under `gradcam/`: each image
    beside its overlay, upscaled, titled with `title`, the true class and p(malignant) (`gradcam.save_figure`).
    Only maps that show something: none when the layer is too coarse (`gradcam.too_small`: said once per stage),
    no empty or flat one (`gradcam.map_verdict`); the run's tag `gradcam` says what was left out and why.

    `x` holds the preprocessed inputs, `images` the same images as uint8 (what the overlay is drawn on).
    """
    import mlflow

    rows = np.asarray(rows)
    if len(rows) == 0:
        return
    layer = layer_for(backbone, classifier)
    reason = too_small(classifier, layer)
    if reason is not None:
        mlflow.set_tag("gradcam", reason)
        say_once(reason)
        return
    maps = gradcam_maps(classifier, layer, x[rows])
    shown = [i for i, cam in enumerate(maps) if map_verdict(cam) is None]
    if len(shown) < len(rows):
        mlflow.set_tag("gradcam", f"{len(rows) - len(shown)} of {len(rows)} maps empty or flat (no location raises "
                                  f"the malignant score more than another): not logged")
    if not shown:
        return
    probabilities = classifier.predict(x[rows[shown]], verbose=0)[:, 1]
    with tracking.artifact_dir() as tmp:
        for row, cam, probability in zip(rows[shown], maps[shown], probabilities):
            image = np.asarray(images[row])
            truth = CLASS_NAMES[int(y[row])]
            save_figure(tmp / "gradcam" / f"image{row:05d}_{truth}_p{probability:.2f}.png", image,
                        resize_map(cam, *image.shape[:2]), alpha,
                        f"{title}\nimage {row}, {truth}: p(malignant) = {probability:.2f}")


@functools.lru_cache(maxsize=None)
def say_once(line: str) -> None:
    """Print `line` once per process (the stage meets the same reason in every fold)."""
    tqdm.write(line)


def finish_fold(params: Params, backbone: str, strategy: int, data: TrainingInputs, fold: Fold,
                trained: TrainedFold, started: float, parent, store: FoldStore, best_so_far: FinishedFold | None,
                cache: PrefixCache | None) -> FinishedFold:
    """Predict, log and persist one trained fold (`started`: when its training began); the record is written
    only after its MLflow run is closed."""
    import mlflow

    x, y = data.x, data.y
    model, history, best_epoch, monitored = trained
    with tracking.fold_run(parent, fold.index, fold.repeat) as child:
        title = figure_title(parent, fold)
        # one pass over every image: test-fold probabilities and the SVM's features together
        activations = predict_outputs(model, x, cache)
        score = activations["probabilities"][fold.test, 1].astype(np.float64)
        result = FinishedFold(
            fold=fold.index, run_id=child.info.run_id,
            metrics=binary_metrics(y[fold.test], score, THRESHOLD), best_epoch=best_epoch, monitored=monitored,
            seconds=0.0, score=score,
            pooled=activations["pooled"].astype(np.float32), dense=activations["dense"].astype(np.float32),
            repeat=fold.repeat,
        )
        _log_fold_curves_and_figures(fold, history, result, y[fold.test], title)
        if params.gradcam.study_images:  # Grad-CAM of the first test images (gradcam.py)
            log_study_overlays(model, backbone, x, data.images, fold.test[:params.gradcam.study_images], y,
                               params.gradcam.alpha, title)
        if params.finetune.log_models == "all":
            tracking.log_keras_model(inference_copy(model), x[:2], mlflow.get_run(child.info.run_id))
        result.seconds = time.perf_counter() - started
        mlflow.log_metric("fold_seconds", result.seconds)
    if params.finetune.log_models == "best":
        if best_so_far is None or better(params.finetune.monitor, monitored, best_so_far.monitored):
            inference_copy(model).save(store.model_path(fold.key))
    store.save_fold(fold.key, result.record(), result.arrays())
    store.keep_only_model(_best_fold(params.finetune.monitor, [r for r in (best_so_far, result) if r]).key)
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

    model = keras.saving.load_model(store.model_path(best.key))
    with tracking.resumed_run(best.run_id) as run:
        tracking.log_keras_model(model, example, mlflow.get_run(run.info.run_id))
    mlflow.set_tag("best_fold", str(best.fold))
    if best.repeat:
        mlflow.set_tag("best_repeat", str(best.repeat))


def fold_line(result: FinishedFold, epochs: int) -> str:
    m = result.metrics
    where = f"repeat {result.repeat} fold {result.fold}" if result.repeat else f"fold {result.fold}"
    return (f"  {where}: auc={m['auc']:.3f} acc={m['accuracy']:.3f} sens={m['recall']:.3f} "
            f"spec={m['specificity']:.3f} best_epoch={result.best_epoch + 1}/{epochs} {result.seconds:.1f}s")


def summary_table(title: str, results: list[FinishedFold], summary: dict, pooled: dict) -> str:
    """A plain-text table: one row per fold, then mean ± sd and the pooled out-of-fold metrics."""
    shown = ("auc", "accuracy", "recall", "specificity", "precision", "f1", "mcc")
    header = f"{'fold':>11} " + " ".join(f"{name[:11]:>11}" for name in shown) + f" {'best ep':>7} {'time s':>7}"
    rows = [title, header]
    repeated = any(r.repeat for r in results)
    for r in results:
        label = f"{r.repeat}:{r.fold}" if repeated else str(r.fold)  # repeat:fold under repeated CV
        rows.append(f"{label:>11} " + " ".join(f"{r.metrics[n]:>11.3f}" for n in shown)
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
    return context, store, tags


def figure_title(run, fold: Fold | None = None) -> str:
    """The title of a run's figures: its configuration (from the run's tags) and, for a fold run, the fold."""
    tags = run.data.tags
    where = "" if fold is None else f", repeat {fold.repeat} fold {fold.index}" if fold.repeat else \
        f", fold {fold.index}"
    return configuration_title(tags["dataset"], tags["backbone"], tags["strategy"], tags["classifier"]) + where



def run_finetune(params: Params, dataset: str, backbone: str, strategy: int) -> dict:
    """Train every missing fold, write the stage outputs, log to MLflow; return the summary metrics."""

    data = load_training_inputs(params.finetune, dataset, backbone)  # a config error stops here: no run, no store
    manifest, size = data.manifest, data.input_size
    folds = fold_plan(data.y, data.groups, params.protocol, params.cv.n_splits, params.cv.val_fraction, params.seed,
                      params.cv.repeats)
    monitor = params.finetune.monitor
    cache = PrefixCache() if params.finetune.prefix_cache else None

    store = FoldStore.open(resume_dir(dataset, backbone, strategy, CLASSIFIER),
                      configuration_key(params, dataset, backbone, strategy, manifest, size))
    # finetune.input_size is the size used (params.yaml's null means the backbone's native size)
    run_params = flatten(params.finetune, "finetune.") | {"finetune.input_size": size} | flatten(params.cv, "cv.") \
        | {"seed": params.seed, "protocol": params.protocol, "dataset": dataset}
    parent_context, store, config_tags = _open_parent(params, dataset, backbone, strategy, run_params, store)
    title = f"{dataset} {backbone} {strategy}%"
    with parent_context as parent:
        store.set_parent_run_id(parent.info.run_id)
        tracking.log_dataset(manifest, dataset_info_if_prepared(dataset), dataset)
        tracking.fail_stale_runs(dataset, store.key, keep=parent.info.run_id)
        results = {k: FinishedFold.load(store, k, record) for k, record in store.done().items()}
        tracking.discard_unfinished_folds(parent, keep={r.run_id for r in results.values()})
        if results:
            tqdm.write(f"{title}: resuming, {_done_text(results)} already done")
        bar = tqdm(total=len(folds), initial=len(results), desc=title, unit="fold")
        pending = [fold for fold in folds if fold.key not in results]
        trained_folds = iter_train_folds(params.finetune, params.seed, backbone, strategy, data.x, data.y, pending,
                                         cache)
        started = time.perf_counter()
        # the generator first: zip then asks it once more after the last fold, which lets it clear the session
        for trained, fold in zip(trained_folds, pending, strict=True):
            best = _best_fold(monitor, list(results.values())) if results else None
            results[fold.key] = finish_fold(params, backbone, strategy, data, fold, trained, started, parent, store,
                                            best, cache)
            del trained  # free the model before the next fold is trained
            tqdm.write(fold_line(results[fold.key], params.finetune.epochs))
            bar.update()
            started = time.perf_counter()
        bar.close()

        ordered = [results[fold.key] for fold in folds]
        oof = out_of_fold(manifest, data.y, folds, ordered, params.cv.repeats)
        features = {feature_key(kind, r.repeat, r.fold): getattr(r, kind) for r in ordered for kind in ("pooled", "dense")}
        # no wall-clock seconds here (MLflow's fold_seconds keeps them): two machines must write the same file
        per_fold = [r.metrics | {"best_epoch": r.best_epoch}
                    | ({"repeat": r.repeat, "fold": r.fold} if params.cv.repeats > 1 else {}) for r in ordered]
        summary = summarize(per_fold)
        pooled, pooled_extra = pooled_metrics(oof)
        tracking.log_summary(summary, {f"pooled_{n}": pooled[n] for n in METRIC_NAMES}
                             | {"fold_seconds_mean": float(np.mean([r.seconds for r in ordered]))})
        if params.finetune.log_models == "best":
            best = _best_fold(monitor, ordered)
            _log_best_model(store, best, data.x[:2])
        with tempfile.TemporaryDirectory() as scratch:
            record = tracking.write_record(Path(scratch), run_params, config_tags)
            write_stage_outputs(dataset, backbone, strategy, CLASSIFIER, oof, per_fold, summary, features,
                                extra={"pooled": pooled} | pooled_extra, files={tracking.RECORD_FILE: record})
        write_plot_data(dataset, backbone, strategy, CLASSIFIER, oof, THRESHOLD)
        table = summary_table(title, ordered, summary, pooled)
        _log_configuration_figures(oof, table, figure_title(parent))
        tqdm.write(table)
    store.clear()
    return summary


def _done_text(results: dict) -> str:
    """The finished folds, as the resume line shows them: fold indices, or (repeat, fold) pairs under repeats."""
    if all(repeat == 0 for repeat, _ in results):
        return f"folds {sorted(fold for _, fold in results)}"
    return f"(repeat, fold) {sorted(results)}"


def out_of_fold(manifest: pd.DataFrame, y: np.ndarray, folds: list[Fold], results: list[FinishedFold],
                repeats: int) -> pd.DataFrame:
    """One row per image and repeat: its test fold and the score of that fold's model (`repeat` column when
    repeats > 1, repeat by repeat)."""
    frames = []
    for repeat in range(repeats):
        oof = manifest[["path", "group", "label"]].assign(y=y, fold=-1, score=np.nan)
        for fold, result in zip(folds, results):
            if fold.repeat == repeat:
                oof.loc[fold.test, "fold"] = fold.index
                oof.loc[fold.test, "score"] = result.score
        frames.append(oof if repeats == 1 else oof.assign(**{REPEAT: repeat})[
            ["path", "group", "label", "y", REPEAT, "fold", "score"]])
    return pd.concat(frames, ignore_index=True) if repeats > 1 else frames[0]


def pooled_metrics(oof: pd.DataFrame) -> tuple[dict, dict]:
    """Pooled out-of-fold metrics: of the single split, or the mean over repeats of each repeat's pooled metrics
    (then also `pooled_repeats`, one per repeat, in the second dict)."""
    if REPEAT not in oof.columns:
        return binary_metrics(oof["y"].to_numpy(), oof["score"].to_numpy(), THRESHOLD), {}
    per_repeat = [binary_metrics(part["y"].to_numpy(), part["score"].to_numpy(), THRESHOLD)
                  for _, part in oof.groupby(REPEAT, sort=True)]
    mean = {name: float(np.mean([p[name] for p in per_repeat])) for name in per_repeat[0]}
    return mean, {"pooled_repeats": per_repeat}


def _log_configuration_figures(oof: pd.DataFrame, table: str, title: str) -> None:
    """Parent-run artifacts: ROC of every fold and pooled, pooled confusion matrix, the summary table (the
    figures of repeat 0 under repeated cross-validation)."""
    if REPEAT in oof.columns:
        oof = oof[oof[REPEAT] == 0]
    with tracking.artifact_dir() as tmp:
        curves = {f"fold {k}": (part["y"], part["score"]) for k, part in oof.groupby("fold")}
        curves["pooled"] = (oof["y"], oof["score"])
        save_roc_png(tmp / "roc_pooled.png", curves, f"{title}: folds and pooled out-of-fold")
        save_confusion_png(tmp / "confusion_matrix_pooled.png", oof["y"], (oof["score"] >= THRESHOLD).astype(int),
                           f"{title}: pooled out-of-fold")
        (tmp / "summary.txt").write_text(table + "\n")
