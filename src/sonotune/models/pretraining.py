"""Pretraining a backbone on a source task, so that `finetune.weights` can start from it: transfer from the
study's own domain (as RadImageNet does for radiology) instead of ImageNet, with nothing downloaded.

The source task is the phantom's: benign vs malignant on fresh simulated cases (`data.phantom.simulate_source`),
which never include a study image. The backbone (random init) gets a small head — the study's own
GlobalMaxPooling → Dense → softmax, so its pooled features are the ones the study's head and SVM read — and is
trained whole (BatchNormalization statistics re-estimated on the training images before each validation:
`recalibrate_batchnorm`); the epoch with the best AUC on held-out source images is kept, and only the backbone's weights are
saved (`<backbone>.weights.h5`, what `keras.applications.<Backbone>(weights=path)` loads at any input size).

Library code: arrays and the `pretrain` section in, a trained Keras backbone out; no files but the one
`save_backbone_weights` is asked to write, no MLflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sonotune.config import Pretrain
from sonotune.data.images import square
from sonotune.data.phantom import simulate_source
from sonotune.models.backbones import create_backbone, get_spec
from sonotune.models.head import HeadConfig, build_classifier
from sonotune.models.strategies import freeze_batchnorm

SOURCE_HEAD = HeadConfig(dense_units=256, dropout=0.3)  # the pretext head; dropped after pretraining
BN_BATCH = 64  # images per forward pass when BatchNormalization statistics are re-estimated


@dataclass(frozen=True)
class SourceTask:
    """Source images as the backbone sees them: uint8 RGB at the input size, and labels (1 malignant)."""

    images: np.ndarray  # (n, size, size, 3) uint8
    y: np.ndarray  # (n,) int


@dataclass(frozen=True)
class Pretrained:
    backbone: object  # the Keras backbone (include_top=False), weights of the best epoch
    history: dict  # per-epoch loss, auc, val_loss, val_auc
    best_epoch: int  # 0-based
    best_val_auc: float  # AUC on the held-out source images at the best epoch


def phantom_source(cfg: Pretrain, input_size: int, seed: int, resize: str = "stretch") -> SourceTask:
    """The phantom source task: `cfg.n_images` fresh cases simulated at `cfg.image_size`, then resized to the
    input size exactly as `prepare` resizes the study's images (RGB, `prepare.resize`)."""
    from PIL import Image

    pixels, y = simulate_source(cfg.n_images, cfg.image_size, seed)
    images = np.stack([square(Image.fromarray(p, mode="L").convert("RGB"), input_size, resize) for p in pixels])
    return SourceTask(images, y)


def source_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (fit, val) index arrays of the source images; each class keeps at least one image per side."""
    rng = np.random.default_rng(seed)
    fit, val = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_val = min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        val.append(members[:n_val])
        fit.append(members[n_val:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def pretrain_backbone(cfg: Pretrain, backbone: str, input_size: int, task: SourceTask, seed: int,
                      callbacks: tuple = ()) -> Pretrained:
    """Train `backbone` (random init) and a pretext head on the source task; keep the best held-out epoch.
    `callbacks`: more Keras callbacks (a progress bar), run after the ones that pick the epoch."""
    import keras

    keras.utils.set_random_seed(seed)
    base = create_backbone(backbone, input_size, None)
    head = HeadConfig(SOURCE_HEAD.dense_units, SOURCE_HEAD.dropout, cfg.learning_rate)
    model = build_classifier(base, head)
    x = get_spec(backbone).preprocess()(task.images.astype(np.float32))
    onehot = keras.utils.to_categorical(task.y, 2)
    fit, val = source_split(task.y, cfg.val_fraction, seed)
    # EarlyStopping with patience = epochs never stops early: it restores the epoch with the best val_auc
    best = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=cfg.epochs,
                                         restore_best_weights=True)
    if cfg.freeze_bn:  # BN stays the identity it was initialised to: no batch statistics to learn or re-estimate
        freeze_batchnorm(base)
        callbacks = [best, *callbacks]
    else:  # statistics first: they are part of the best epoch
        callbacks = [precise_batchnorm_callback(base, x[fit]), best, *callbacks]
    history = model.fit(x[fit], onehot[fit], validation_data=(x[val], onehot[val]), epochs=cfg.epochs,
                        batch_size=cfg.batch_size, shuffle=True, verbose=0, callbacks=callbacks)
    values = {key: [float(v) for v in series] for key, series in history.history.items()}
    best_epoch = int(np.argmax(values["val_auc"]))
    return Pretrained(base, values, best_epoch, values["val_auc"][best_epoch])


def recalibrate_batchnorm(model, x: np.ndarray, batch_size: int = BN_BATCH) -> int:
    """Re-estimate every BatchNormalization layer's moving mean and variance on `x` ("precise BN"); returns the
    number of BN layers (0: nothing to do, e.g. VGG).

    Why: a backbone trained from scratch for a few hundred steps keeps moving statistics that are still close to
    their initial (0, 1) at momentum 0.99, so in inference mode — its held-out AUC, and every frozen layer of the
    fine-tuning — it normalises with the wrong statistics and its features are noise. Here each full batch runs in
    training mode with momentum k / (k + 1), so the moving statistics become the average over the batches of
    their batch statistics (the last, partial batch is left out unless it is the only one); weights are untouched.
    """
    import keras

    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    starts = list(range(0, max(len(x) - batch_size + 1, 1), batch_size))
    momenta = [layer.momentum for layer in layers]
    try:
        for k, start in enumerate(starts):
            for layer in layers:
                layer.momentum = k / (k + 1)
            model(x[start:start + batch_size], training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return len(layers)


def precise_batchnorm_callback(backbone_model, x: np.ndarray):
    """A Keras callback that re-estimates the backbone's BatchNormalization statistics on `x` (the training
    images) before each validation, so the held-out AUC that picks the epoch is the one inference will give."""
    import keras

    class PreciseBatchNorm(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            recalibrate_batchnorm(backbone_model, x)

    return PreciseBatchNorm()


def untrained_backbone(backbone: str, input_size: int, seed: int) -> Pretrained:
    """`pretrain.epochs: 0`: the backbone's seeded random initialisation, nothing simulated or trained."""
    import keras

    keras.utils.set_random_seed(seed)
    return Pretrained(create_backbone(backbone, input_size, None), {}, -1, float("nan"))


def save_backbone_weights(backbone_model, path: Path) -> Path:
    """Write the backbone's weights to `path` (a `.weights.h5` file), whole or not at all."""
    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"{path}: Keras weights files end in .weights.h5")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name[:-len('.weights.h5')]}.tmp.weights.h5")
    try:
        backbone_model.save_weights(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
