"""Backbone registry: one entry per ImageNet CNN, and the one factory `create_backbone` that builds them.

An entry knows its Keras constructor, its `preprocess_input`, its native input size, the weights file Keras
caches for it and, for the paper's five backbones, the frozen-layer counts of the paper's Table 2. Adding
a backbone is adding one entry; strategies fall back to `round(n × (1 − f))` for entries without a table.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sonotune.errors import ConfigError

WEIGHTS_URL_HOST = "storage.googleapis.com"


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    constructor: str  # attribute of keras.applications
    preprocess_module: str  # keras.applications.<module>.preprocess_input
    native_size: int
    weights_file: str  # file name Keras caches under ~/.keras/models for weights="imagenet"
    layer_count: int  # len(model.layers) with include_top=False
    min_size: int = 32
    table2: dict[int, int] = field(default_factory=dict)  # strategy % -> frozen layer count (paper, Table 2)
    gradcam_layer: str = ""  # the last convolutional block's output: the feature maps Grad-CAM weighs

    def preprocess(self) -> Callable:
        import keras

        return getattr(keras.applications, self.preprocess_module).preprocess_input


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "vgg16", "VGG16", "vgg16", 224, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", 19,
            table2={0: 19, 15: 16, 25: 14, 50: 10, 75: 5, 85: 3, 100: 0}, gradcam_layer="block5_conv3",
        ),
        BackboneSpec(
            "vgg19", "VGG19", "vgg19", 224, "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5", 22,
            table2={0: 22, 15: 19, 25: 16, 50: 11, 75: 6, 85: 4, 100: 0}, gradcam_layer="block5_conv4",
        ),
        BackboneSpec(
            "resnet50", "ResNet50", "resnet", 224, "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", 175,
            table2={0: 175, 15: 149, 25: 131, 50: 88, 75: 44, 85: 26, 100: 0}, gradcam_layer="conv5_block3_out",
        ),
        BackboneSpec(
            "resnet101", "ResNet101", "resnet", 224, "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5",
            345, table2={0: 345, 15: 293, 25: 259, 50: 173, 75: 86, 85: 52, 100: 0}, gradcam_layer="conv5_block3_out",
        ),
        BackboneSpec(
            "inceptionv3", "InceptionV3", "inception_v3", 299,
            "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5", 311, min_size=75,
            table2={0: 311, 15: 264, 25: 233, 50: 156, 75: 78, 85: 47, 100: 0}, gradcam_layer="mixed10",
        ),
    )
}


def get_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ConfigError(f"unknown backbone '{name}' (valid: {', '.join(sorted(BACKBONES))})") from None


def keras_weights_cache() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def _can_reach(host: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to host:443 opens within `timeout` seconds, DNS lookup included.

    `create_connection`'s timeout does not bound the name lookup (a dead resolver can stall it for
    tens of seconds), so the attempt runs in a daemon thread that is abandoned after `timeout`.
    """
    outcome: list[bool] = []
    finished = threading.Event()

    def attempt() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            outcome.append(True)
        except OSError:
            outcome.append(False)
        finished.set()

    threading.Thread(target=attempt, daemon=True).start()
    return finished.wait(timeout) and outcome[0]


BACKBONE_PLACEHOLDER = "{backbone}"  # in a weights path: the backbone's name (one file per backbone)


def weights_path(weights: str, backbone: str) -> str:
    """A weights path with `{backbone}` replaced by the backbone's name (e.g. prepared/pretrain/{backbone}.weights.h5)."""
    return weights.replace(BACKBONE_PLACEHOLDER, backbone)


def resolve_weights(spec: BackboneSpec, weights: str | None) -> str | None:
    """Map the params value (imagenet | null | a file, `{backbone}` standing for the backbone's name) to what Keras
    accepts, failing fast when absent."""
    if weights is None:
        return None
    if weights == "imagenet":
        cached = keras_weights_cache() / spec.weights_file
        if cached.is_file() or _can_reach(WEIGHTS_URL_HOST):
            return "imagenet"
        raise ConfigError(
            f"finetune.weights: imagenet weights for {spec.name} are not cached and there is no network; "
            f"place {spec.weights_file} at {cached} or set weights to a local file"
        )
    path = weights_path(weights, spec.name)
    if not Path(path).is_file():
        made_by = " (made by `sonotune pretrain`, dvc.yaml's pretrain stage)" if "pretrain" in path else ""
        raise ConfigError(f"finetune.weights: weights file {path} not found{made_by}")
    return path


def check_backbone(name: str, input_size: int | None = None, weights: str | None = None) -> str | None:
    """Validate a backbone request before any work starts; return the weights argument for Keras."""
    spec = get_spec(name)
    size = input_size or spec.native_size
    if size < spec.min_size:
        raise ConfigError(f"finetune.input_size: {name} needs at least {spec.min_size} px (got {size})")
    return resolve_weights(spec, weights)


def create_backbone(name: str, input_size: int | None = None, weights: str | None = None):
    """Build the named Keras application with include_top=False at input_size (default: native size)."""
    import keras

    keras_weights = check_backbone(name, input_size, weights)
    spec = get_spec(name)
    size = input_size or spec.native_size
    constructor = getattr(keras.applications, spec.constructor)
    return constructor(include_top=False, weights=keras_weights, input_shape=(size, size, 3))
