"""Grad-CAM (Selvaraju et al. 2017): where in an image the fine-tuned backbone found its evidence.

For a classifier built by `models.head.build_classifier`, the maps are computed on the backbone's last
convolutional block (`BackboneSpec.gradcam_layer`): the gradient of a target score with respect to that
block's feature maps, averaged over space, weighs the maps; their ReLU'd sum, scaled to [0, 1] and resized to
the image's own size, is the heat map. Targets:
- MLP head: the malignant log-odds `log p1 − log p0`, which equals the difference of the two pre-softmax
  logits (the score the Grad-CAM paper differentiates) and does not saturate like the probability does;
- SVM head: the linear SVM's decision value, written as a differentiable function of the Keras features
  (`svm_target`), so the map explains the SVM, not the MLP head it replaced.

Gradients use `tf.GradientTape`: Keras 3 has no backend-neutral gradient API, and TensorFlow is the supported
backend of this project (on JAX or PyTorch this module raises a clear error). Used by `sonotune predict
--gradcam DIR` and by the finetune stage (`save_figure`: each of `gradcam.study_images` test images per fold
beside its overlay, upscaled for reading). The stage logs a figure only where it means something: not at all when
the layer's map is under `MIN_MAP_SIDE` on a side (`too_small`: e.g. VGG16's last block is 2×2 at 32 px, ResNet50's
1×1), and not for a map that is empty or flat (`map_verdict`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from sonotune.errors import ConfigError

EPS = 1e-7
FLAT = 0.05  # a map whose values span less than this (of its [0, 1] range) shows no location standing out
MIN_MAP_SIDE = 3  # a 1×1 map is one weight (all or nothing), a 2×2 one four quadrants: neither locates a lesion
FIGURE_PANEL_INCHES = 3.2  # each panel of `save_figure`, at 100 dpi: a 64 px image is shown at 320 px


def layer_for(backbone: str, classifier) -> str:
    """The registry's Grad-CAM layer for `backbone`, else the classifier's last Conv2D layer."""
    import keras

    from sonotune.models.backbones import BACKBONES

    spec = BACKBONES.get(backbone)
    if spec is not None and spec.gradcam_layer:
        return spec.gradcam_layer
    spatial = [layer.name for layer in classifier.layers if isinstance(layer, keras.layers.Conv2D)]
    if not spatial:
        raise ConfigError(f"{backbone}: no convolutional layer to compute Grad-CAM on")
    return spatial[-1]


def map_shape(classifier, layer: str) -> tuple[int, int]:
    """Height and width of `layer`'s feature maps: the Grad-CAM map's resolution."""
    shape = classifier.get_layer(layer).output.shape
    return int(shape[1]), int(shape[2])


def too_small(classifier, layer: str) -> str | None:
    """Why Grad-CAM on `layer` cannot locate anything (its map is under `MIN_MAP_SIDE` on a side), as one line
    naming the input size it would need; None when the map is large enough."""
    height, width = map_shape(classifier, layer)
    if min(height, width) >= MIN_MAP_SIDE:
        return None
    size = int(classifier.inputs[0].shape[1])
    needed = math.ceil(size * MIN_MAP_SIDE / max(min(height, width), 1))
    return (f"Grad-CAM skipped: layer {layer} is {height}×{width} at {size} px input (a map that locates anything "
            f"needs {MIN_MAP_SIDE}×{MIN_MAP_SIDE} or more: finetune.input_size ≥ about {needed})")


def mlp_target(outputs: dict):
    """Malignant log-odds from the softmax head (= logit difference)."""
    import keras

    p = outputs["probabilities"]
    return keras.ops.log(p[:, 1] + EPS) - keras.ops.log(p[:, 0] + EPS)


def svm_target(pipeline, features: str) -> Callable:
    """The decision value of a fitted `svm_pipeline` (StandardScaler → linear SVC), as a function of the Keras
    features."""
    import keras

    scaler, svc = pipeline.named_steps["scale"], pipeline.named_steps["svc"]
    mean = np.asarray(scaler.mean_, dtype=np.float32)
    scale = np.asarray(scaler.scale_, dtype=np.float32)
    weights = np.asarray(svc.coef_[0], dtype=np.float32)
    bias = float(svc.intercept_[0])

    def target(outputs: dict):
        standardized = (outputs[features] - mean) / scale
        return keras.ops.sum(standardized * weights, axis=-1) + bias

    return target


def _require_tensorflow():
    import keras

    if keras.backend.backend() != "tensorflow":
        raise ConfigError(f"Grad-CAM needs the TensorFlow backend of Keras (KERAS_BACKEND is "
                          f"'{keras.backend.backend()}')")
    import tensorflow as tf

    return tf


def gradcam_maps(classifier, layer: str, x: np.ndarray, target: Callable = mlp_target,
                 batch_size: int = 16) -> np.ndarray:
    """Grad-CAM maps (n, h, w) in [0, 1] at the layer's resolution for preprocessed images `x`.

    A map is all zeros only when no location raises the target (then there is nothing to show).
    """
    import keras

    tf = _require_tensorflow()
    model = keras.Model(classifier.inputs, {
        "conv": classifier.get_layer(layer).output,
        "probabilities": classifier.outputs[0],
        "pooled": classifier.get_layer("pooled").output,
        "dense": classifier.get_layer("dense_features").output,
    })
    maps = []
    for start in range(0, len(x), batch_size):
        batch = tf.convert_to_tensor(np.asarray(x[start:start + batch_size], dtype=np.float32))
        with tf.GradientTape() as tape:
            outputs = model(batch, training=False)
            score = target(outputs)
        conv = outputs["conv"]
        grads = tape.gradient(score, conv)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * conv, axis=-1)).numpy()
        peak = cam.max(axis=(1, 2), keepdims=True)
        maps.append(np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0))
    return np.concatenate(maps).astype(np.float32)


def resize_map(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """A map resized (bilinear) to height × width, kept in [0, 1]."""
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """The image (H×W or H×W×3 uint8) with the heat map (H×W in [0, 1]) blended over it in the jet colormap."""
    from matplotlib import colormaps

    rgb = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image[..., :3]
    colours = colormaps["jet"](heat)[..., :3] * 255
    # weight the colour by the heat too, so cold regions leave the B-mode image readable
    weight = alpha * heat[..., None]
    return np.clip(rgb * (1 - weight) + colours * weight, 0, 255).astype(np.uint8)


def save_overlay(path: Path, image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, heat, alpha)).save(path)
    return path


def map_verdict(heat: np.ndarray) -> str | None:
    """Why a map shows nothing, or None when it does: "empty" (all zero: no location raises the target) or
    "flat" (the same weight everywhere, within `FLAT`)."""
    if not np.any(heat > 0):
        return "empty Grad-CAM map\n(no location raises the malignant score)"
    if float(heat.max() - heat.min()) < FLAT:
        return "flat Grad-CAM map\n(every location weighs the same)"
    return None


def save_figure(path: Path, image: np.ndarray, heat: np.ndarray, alpha: float = 0.4, title: str = "") -> Path:
    """The image beside its overlay (`overlay`), both upscaled to `FIGURE_PANEL_INCHES`, under `title`; an empty
    or flat map (`map_verdict`) is said in the title instead of showing an image that merely looks cold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    verdict = map_verdict(heat)
    fig, axes = plt.subplots(1, 2, figsize=(2 * FIGURE_PANEL_INCHES, FIGURE_PANEL_INCHES + 0.8))
    shown = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    axes[0].imshow(shown, interpolation="bilinear")
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(overlay(image, heat, alpha), interpolation="bilinear")
    axes[1].set_title(verdict or "Grad-CAM\n(red: evidence for malignant)", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
