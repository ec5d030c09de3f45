"""Training the study's classifier on folds: build the backbone, freeze per strategy, fit with best-epoch
selection, then one prediction pass for the test scores and the SVM's features.

`iter_train_folds` / `train_folds` train a batch of folds of one configuration (every fold × repeat of a
cross-validation); their docstring is the batch contract a vectorised trainer must keep. `train_fold` trains one.

Library code: arrays, a `cv.Fold`, the `finetune` section of the params and a seed in; a trained Keras model out.
It knows nothing of stages, files or MLflow. The frozen-prefix cache (`PrefixCache`) is an object the caller
creates and passes to every fold of one configuration, so the folds share the frozen part's activations, the
compiled suffix and, when the frozen weights are the same for every fold (`finetune.weights` imagenet or a
file), the backbone itself: built and loaded once (`BackbonePool`), each fold gets the shared frozen layers and
fresh copies of the trainable ones at their loaded values (`prefix_cache.share_constant_part`). Without a
cache, each fold builds its model and fits it whole (the paper's way).

Seeds: a fold's backbone (random when `finetune.weights` is null) is built under `fold_seed`; the head (its
initial weights, Dropout draws) and the shuffles under `head_seed(fold_seed)`, set after the backbone is built,
so they do not depend on how much randomness building the backbone consumed (none when it is shared).
"""

from __future__ import annotations

import gc
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from sonotune.config import Finetune
from sonotune.cv import Fold, repeat_seed
from sonotune.models.backbones import create_backbone
from sonotune.models.head import HeadConfig, build_classifier, feature_model
from sonotune.models.prefix_cache import (
    ActivationStore,
    SuffixPool,
    fit_with_prefix_cache,
    predict_with_prefix_cache,
    share_constant_part,
)
from sonotune.models.strategies import apply_strategy

PREDICT_BATCH = 64
# the suffix's train step runs this many batches per call (same batches, same math: Keras loops them inside one
# compiled function); at 0 % a head step is ~1 ms of arithmetic under ~12 ms of per-call overhead
SUFFIX_STEPS_PER_EXECUTION = 64


class BackbonePool:
    """The configuration's backbone, built, loaded and frozen once; `derive` gives each fold its own model.

    Holds one entry (a study trains one configuration; the next replaces it). Only for frozen weights that
    every fold shares (imagenet or a file): random backbones differ per fold by seed and are never pooled.
    """

    def __init__(self):
        self.key: tuple | None = None
        self.base = None
        self.builds = 0

    def clear(self) -> None:
        self.key, self.base = None, None

    def derive(self, cfg: Finetune, backbone: str, strategy: int):
        key = backbone_key(cfg, backbone, strategy)
        if key != self.key:
            self.clear()
            self.base = build_backbone(cfg, backbone, strategy)
            self.key = key
            self.builds += 1
        return share_constant_part(self.base)


@dataclass
class PrefixCache:
    """What the folds of one configuration share: the frozen prefix's activations, the compiled suffixes, the
    backbone (when its weights are the same for every fold) and the seconds spent per phase (`seconds`)."""

    store: ActivationStore = field(default_factory=ActivationStore)
    suffixes: SuffixPool = field(default_factory=SuffixPool)
    backbones: BackbonePool = field(default_factory=BackbonePool)
    seconds: Counter = field(default_factory=Counter)  # build / prefix / fit, summed over the folds

    def clear(self) -> None:
        self.store.clear()
        self.suffixes.clear()
        self.backbones.clear()


class TrainedFold(NamedTuple):
    model: object  # the Keras classifier, restored to its best epoch
    history: dict  # per-epoch values of loss, metrics and their val_ forms
    best_epoch: int  # 0-based
    monitored: float  # best value of finetune.monitor


def better(monitor: str, a: float, b: float) -> bool:
    """Whether monitored value `a` beats `b` (AUC: higher; loss: lower)."""
    return a < b if monitor == "val_loss" else a > b


def epoch_bar(total: int, description: str, monitor: str):
    """A Keras callback showing a tqdm bar over epochs with the loss and the monitored value."""
    import keras

    class EpochBar(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.bar = tqdm(total=total, desc=description, unit="epoch", leave=False)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in (logs or {}).items() if k in ("loss", monitor)})
            self.bar.update()

        def on_train_end(self, logs=None):
            self.bar.close()

    return EpochBar()


class dtype_policy:  # noqa: N801 - used as a context manager
    """Keras' global dtype policy set to `name` while building (layers keep the policy they were built with)."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        import keras

        self.previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        import keras

        keras.config.set_dtype_policy(self.previous)


def backbone_key(cfg: Finetune, backbone: str, strategy: int) -> tuple:
    """What a built, loaded and frozen backbone depends on (a weights file by its path, size and mtime)."""
    weights = cfg.weights
    if weights not in (None, "imagenet") and os.path.isfile(weights):
        stat = os.stat(weights)
        weights = (os.path.abspath(weights), stat.st_size, stat.st_mtime_ns)
    return backbone, cfg.input_size, weights, strategy, cfg.freeze_bn, cfg.precision


def build_backbone(cfg: Finetune, backbone: str, strategy: int):
    """The backbone with its weights and its first layers frozen per `strategy`."""
    with dtype_policy(cfg.precision):
        base = create_backbone(backbone, cfg.input_size, cfg.weights)
    apply_strategy(base, backbone, strategy, cfg.freeze_bn)
    return base


def head_seed(seed: int) -> int:
    """The seed of a fold's head and shuffles, derived from its `fold_seed` (a stream apart from the
    backbone's, which a random-weights backbone is built from)."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0] >> 1)


def build_fold_model(cfg: Finetune, backbone: str, strategy: int, seed: int, pool: BackbonePool | None = None):
    """The backbone with its first layers frozen per `strategy`, under the paper's head, compiled; the backbone
    built under `seed` (or derived from `pool` when its weights are shared), the head under `head_seed(seed)`."""
    import keras

    keras.utils.set_random_seed(seed)
    if pool is not None and cfg.weights is not None:
        base = pool.derive(cfg, backbone, strategy)
    else:
        base = build_backbone(cfg, backbone, strategy)
    keras.utils.set_random_seed(head_seed(seed))
    with dtype_policy(cfg.precision):
        return build_classifier(base, HeadConfig(cfg.dense_units, cfg.dropout, cfg.learning_rate))


def fold_seed(seed: int, fold: Fold) -> int:
    """The training seed of `fold`: `seed + 1000·repeat + fold index` (cv.repeat_seed), unique per (repeat, fold)
    and independent of which other folds are trained; repeat 0's fold k keeps `seed + k`."""
    return repeat_seed(seed, fold.repeat) + fold.index


def iter_train_folds(cfg: Finetune, seed: int, backbone: str, strategy: int, x: np.ndarray, y: np.ndarray,
                     folds: Sequence[Fold], cache: PrefixCache | None = None) -> Iterator[TrainedFold]:
    """Train a batch of folds of one configuration, yielding each `TrainedFold` as it is ready.

    The batch contract (what any implementation, e.g. one that trains every fold at once under `jax.vmap`,
    must keep; the stages rely on nothing else):
    - `folds`: any folds of one configuration (same `cfg`, backbone, strategy, `x`, `y`), any mix of repeats
      and indices, e.g. only the folds a resumed run still misses.
    - One `TrainedFold` per fold, yielded in the order of `folds`.
    - Fold f's result depends only on (cfg, seed, backbone, strategy, x, y, f): it is seeded with
      `fold_seed(seed, f)` = seed + 1000·f.repeat + f.index, so it does not depend on which other folds are in
      the batch or ran earlier in the process (up to the backend's float nondeterminism).
    - The consumer persists each yielded fold before asking for the next. This sequential implementation trains
      fold i+1 only when asked, so a kill loses at most the fold in progress; a batched one may yield only
      after the whole batch is trained, and then a kill loses at most the batch in progress.
    - Between folds the Keras session is cleared (and garbage collected): a yielded model stays usable, but
      its memory is freed only once the consumer drops it.
    """
    import keras

    if cfg.parallel_folds and keras.backend.backend() == "jax":  # every fold at once (models/batched.py)
        from sonotune.models.batched import Kit, iter_train_folds_batched

        kit = Kit(build_fold_model, train_fold, fold_seed, head_seed, class_weights, TrainedFold, better)
        yield from iter_train_folds_batched(kit, cfg, seed, backbone, strategy, x, y, folds, cache)
        return
    for fold in folds:
        yield train_fold(cfg, seed, backbone, strategy, x, y, fold, cache)
        keras.backend.clear_session()
        gc.collect()


def train_folds(cfg: Finetune, seed: int, backbone: str, strategy: int, x: np.ndarray, y: np.ndarray,
                folds: Sequence[Fold], cache: PrefixCache | None = None) -> list[TrainedFold]:
    """Every fold of `folds` trained, in order: `iter_train_folds` (its docstring is the batch contract)
    collected into a list (all models held at once)."""
    return list(iter_train_folds(cfg, seed, backbone, strategy, x, y, folds, cache))


def class_weights(policy: str, y_fit: np.ndarray) -> dict[int, float] | None:
    """Keras `class_weight` for the fold's training labels: None (the paper), or "balanced" n / (2 · n_class)."""
    if policy == "none":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    classes = np.array([0, 1])
    return dict(zip(classes.tolist(), compute_class_weight("balanced", classes=classes, y=y_fit).tolist()))


def train_fold(cfg: Finetune, seed: int, backbone: str, strategy: int, x: np.ndarray, y: np.ndarray, fold: Fold,
               cache: PrefixCache | None = None) -> TrainedFold:
    """Train on `fold.fit`, keep the epoch with the best `cfg.monitor` on `fold.val`; seeded with
    `fold_seed(seed, fold)`.

    With `cache`, the frozen layers run once per image set and, when the weights are shared (imagenet or a
    file), the backbone is built once per configuration (same math: the weights match the full model's fit up
    to float rounding; falls back to the full fit, logged, when nothing is frozen)."""
    import keras

    start = time.perf_counter()
    model = build_fold_model(cfg, backbone, strategy, fold_seed(seed, fold), cache.backbones if cache else None)
    built = time.perf_counter()
    onehot = keras.utils.to_categorical(y, 2)
    mode = "min" if cfg.monitor == "val_loss" else "max"
    # EarlyStopping with patience = epochs never stops early: it is the "keep the best epoch" selector
    best = keras.callbacks.EarlyStopping(
        monitor=cfg.monitor, mode=mode, patience=cfg.epochs, restore_best_weights=True
    )
    name = f"{backbone}-{strategy} fold {fold.index}" + (f" repeat {fold.repeat}" if fold.repeat else "")
    callbacks = [best, epoch_bar(cfg.epochs, name, cfg.monitor)]
    fit = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True, verbose=0, callbacks=callbacks,
               class_weight=class_weights(cfg.class_weight, y[fold.fit]))
    if cache is not None:
        misses = cache.store.misses
        history = fit_with_prefix_cache(model, x, onehot, fold.fit, fold.val, store=cache.store,
                                        suffixes=cache.suffixes,
                                        compile_overrides={"steps_per_execution": SUFFIX_STEPS_PER_EXECUTION}, **fit)
        prefix = cache.store.last_extract_s if cache.store.misses > misses else 0.0
        cache.seconds.update(build=built - start, prefix=prefix, fit=time.perf_counter() - built - prefix)
    else:
        history = model.fit(x[fold.fit], onehot[fold.fit], validation_data=(x[fold.val], onehot[fold.val]), **fit)
    return TrainedFold(model, history.history, best.best_epoch, float(best.best))


def predict_outputs(model, x: np.ndarray, cache: PrefixCache | None = None) -> dict[str, np.ndarray]:
    """One pass over every image: `probabilities` (n, 2), `pooled` and `dense` features (head.feature_model).

    With the cache that trained the model, the frozen part's activations are reused, not recomputed."""
    features = feature_model(model)
    if cache is not None:
        return predict_with_prefix_cache(features, x, PREDICT_BATCH, store=cache.store, suffixes=cache.suffixes)
    return features.predict(x, batch_size=PREDICT_BATCH, verbose=0)
