"""The data prelude of the stages that train a network (finetune, deploy): one prepared dataset as arrays.

`load_training_inputs(cfg, dataset, backbone)` checks the backbone against the `finetune` section first (a bad
name, size or weights file stops before any data loads), then reads `prepared/<dataset>/` at the backbone's
input size and applies the backbone's own `preprocess_input`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sonotune.config import Finetune
from sonotune.data.manifest import label_vector
from sonotune.data.prepared import load_prepared
from sonotune.models.backbones import check_backbone, get_spec


@dataclass(frozen=True)
class TrainingInputs:
    manifest: pd.DataFrame  # included rows, in the order of the arrays
    images: np.ndarray  # (n, size, size, 3) uint8, as cached by prepare (what Grad-CAM overlays are drawn on)
    x: np.ndarray  # the network's input: float32 after the backbone's preprocess_input
    y: np.ndarray  # 0 benign, 1 malignant
    groups: np.ndarray  # fold groups (patient/case/duplicate cluster)
    input_size: int


def input_size(cfg: Finetune, backbone: str) -> int:
    """`finetune.input_size`, or the backbone's native size when it is null."""
    return cfg.input_size or get_spec(backbone).native_size


def load_training_inputs(cfg: Finetune, dataset: str, backbone: str) -> TrainingInputs:
    size = input_size(cfg, backbone)
    check_backbone(backbone, size, cfg.weights)
    manifest, images = load_prepared(dataset, size)
    x = get_spec(backbone).preprocess()(np.asarray(images, dtype=np.float32))
    return TrainingInputs(manifest, images, x, label_vector(manifest), manifest["group"].to_numpy(), size)
