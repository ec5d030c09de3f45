"""The study's vocabulary, one home each: labels, strategies, classifiers, their thresholds, image suffixes.

Everything here is plain data (no imports beyond typing), so any module, from config to the stages, can use it.
"""

from __future__ import annotations

from typing import Literal

CLASS_NAMES = ("benign", "malignant")  # label 0, label 1 (the positive class)
Label = Literal["benign", "malignant"]
DEFAULT_CLASSES: dict[str, Label] = {"benign": "benign", "malignant": "malignant"}  # folder/CSV value -> label

# fine-tuning strategy = % of the backbone's last layers left trainable (the paper's seven)
STRATEGIES = (0, 15, 25, 50, 75, 85, 100)
Strategy = Literal[0, 15, 25, 50, 75, 85, 100]

PROTOCOLS = ("leakage_free", "paper")  # their rules: sonotune.cv.RULES
Protocol = Literal["leakage_free", "paper"]

CLASSIFIERS = ("mlp", "svm")  # the MLP head (stage finetune) and the linear SVM on its features (stage svm)
Classifier = Literal["mlp", "svm"]
CLASSIFIER_LABELS = {"mlp": "MLP", "svm": "SVM"}
# the score at or above which an image is called malignant: MLP probability, SVM decision value
THRESHOLDS = {"mlp": 0.5, "svm": 0.0}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # image files a dataset source reads
PREDICT_SUFFIXES = IMAGE_SUFFIXES + (".gif", ".webp")  # `sonotune predict` also reads these (Pillow decodes them)
