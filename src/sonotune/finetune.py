"""Stage `finetune`: one (dataset, backbone, strategy) across the folds, with the paper's MLP head.

Run as `sonotune finetune --dataset D --backbone B --strategy S`. Per fold: build the backbone, freeze its
first layers per the strategy, train with the epoch chosen on the validation split (or on the test fold
under `protocol: paper`), predict the test fold once, and extract the pooled and Dense-512 features of every
image for the SVM stage. Writes `runs/D/B/S/mlp/` (oof.csv, features.npz), `mlp_metrics.json` (DVC metrics)
and `mlp_roc.csv` (DVC plots); logs a parent MLflow run with one nested run per fold.
"""

from __future__ import annotations

import gc

import numpy as np
from tqdm.auto import tqdm

from sonotune import tracking
from sonotune.config import Params, flatten
from sonotune.cv import Fold, fold_plan
from sonotune.data.manifest import label_vector
from sonotune.metrics import binary_metrics, summarize
from sonotune.models.backbones import create_backbone, get_spec
from sonotune.models.head import HeadConfig, build_classifier, feature_model
from sonotune.models.prefix_cache import fit_with_prefix_cache, predict_with_prefix_cache
from sonotune.models.strategies import apply_strategy
from sonotune.outputs import write_stage_outputs
from sonotune.plots import save_confusion_png, save_roc_png
from sonotune.prepare import load_prepared

CLASSIFIER = "mlp"
PREDICT_BATCH = 64


def _epoch_bar(total: int, description: str):
    import keras

    class EpochBar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=total, desc=description, unit="epoch", leave=False)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in (logs or {}).items() if k in ("loss", "val_auc")})
            self.bar.update()

        def on_train_end(self, logs=None):
            self.bar.close()

    return EpochBar()


def train_fold(params: Params, backbone: str, strategy: int, x: np.ndarray, y: np.ndarray, fold: Fold):
    """Train one fold's classifier; return (model, history dict, best epoch index)."""
    import keras

    cfg = params.finetune
    keras.utils.set_random_seed(params.seed + fold.index)
    base = create_backbone(backbone, cfg.input_size, cfg.weights)
    apply_strategy(base, backbone, strategy, cfg.freeze_bn)
    model = build_classifier(base, HeadConfig(cfg.dense_units, cfg.dropout, cfg.learning_rate))
    onehot = keras.utils.to_categorical(y, 2)
    mode = "max" if cfg.monitor == "val_auc" else "min"
    best = keras.callbacks.EarlyStopping(
        monitor=cfg.monitor, mode=mode, patience=cfg.epochs, restore_best_weights=True
    )
    callbacks = [best, _epoch_bar(cfg.epochs, f"{backbone}-{strategy} fold {fold.index}")]
    if cfg.prefix_cache:  # same math, frozen layers run once per image set (falls back to the fit below, logged)
        history = fit_with_prefix_cache(model, x, onehot, fold.fit, fold.val, epochs=cfg.epochs,
                                        batch_size=cfg.batch_size, shuffle=True, verbose=0, callbacks=callbacks)
        return model, history.history, best.best_epoch
    history = model.fit(
        x[fold.fit], onehot[fold.fit],
        validation_data=(x[fold.val], onehot[fold.val]),
        epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True, verbose=0,
        callbacks=callbacks,
    )
    return model, history.history, best.best_epoch


def _log_fold(fold: Fold, history: dict, best_epoch: int, fold_metrics: dict, y, prob) -> None:
    import mlflow

    for step in range(len(history.get("loss", []))):
        mlflow.log_metrics({f"epoch_{k}": float(v[step]) for k, v in history.items()}, step=step)
    mlflow.log_metrics(fold_metrics | {"best_epoch": best_epoch})
    with tracking.artifact_dir() as tmp:
        save_roc_png(tmp / "roc.png", {"MLP": (y, prob)}, f"fold {fold.index}")
        save_confusion_png(tmp / "confusion_matrix.png", y, (prob >= 0.5).astype(int), f"fold {fold.index}")


def run_finetune(params: Params, dataset: str, backbone: str, strategy: int) -> dict:
    """Train every fold, write the stage outputs, log to MLflow; return the summary metrics."""
    import keras

    size = params.finetune.input_size or get_spec(backbone).native_size
    manifest, images = load_prepared(dataset, size)
    y = label_vector(manifest)
    groups = manifest["group"].to_numpy()
    folds = fold_plan(y, groups, params.protocol, params.cv.n_splits, params.cv.val_fraction, params.seed)
    x = get_spec(backbone).preprocess()(np.asarray(images, dtype=np.float32))

    oof = manifest[["path", "group", "label"]].assign(y=y, fold=-1, score=np.nan)
    features: dict[str, np.ndarray] = {}
    per_fold = []
    run_params = flatten(params.finetune, "finetune.") | flatten(params.cv, "cv.") | {
        "seed": params.seed, "protocol": params.protocol, "input_size": size, "dataset": dataset,
    }
    with tracking.parent_run(dataset, backbone, strategy, CLASSIFIER, params.protocol, run_params) as parent:
        for fold in tqdm(folds, desc=f"{dataset} {backbone} {strategy}%", unit="fold"):
            with tracking.fold_run(parent, fold.index):
                model, history, best_epoch = train_fold(params, backbone, strategy, x, y, fold)
                # one pass over every image: test-fold probabilities and the SVM's features together
                if params.finetune.prefix_cache:  # the frozen part's activations cached by train_fold
                    activations = predict_with_prefix_cache(feature_model(model), x, PREDICT_BATCH)
                else:
                    activations = feature_model(model).predict(x, batch_size=PREDICT_BATCH, verbose=0)
                prob = activations["probabilities"][fold.test, 1]
                features[f"pooled_{fold.index}"] = activations["pooled"].astype(np.float32)
                features[f"dense_{fold.index}"] = activations["dense"].astype(np.float32)
                oof.loc[fold.test, "fold"] = fold.index
                oof.loc[fold.test, "score"] = prob
                fold_metrics = binary_metrics(y[fold.test], prob, 0.5)
                per_fold.append(fold_metrics)
                _log_fold(fold, history, best_epoch, fold_metrics, y[fold.test], prob)
                tqdm.write(
                    f"  fold {fold.index}: auc={fold_metrics['auc']:.3f} acc={fold_metrics['accuracy']:.3f} "
                    f"best_epoch={best_epoch + 1}/{params.finetune.epochs}"
                )
            del model
            keras.backend.clear_session()
            gc.collect()
        summary = summarize(per_fold)
        import mlflow

        mlflow.log_metrics(summary)
        write_stage_outputs(dataset, backbone, strategy, CLASSIFIER, oof, per_fold, summary, features)
        with tracking.artifact_dir() as tmp:
            save_roc_png(tmp / "roc_pooled.png", {"MLP": (oof["y"], oof["score"])}, "pooled out-of-fold")
    return summary
