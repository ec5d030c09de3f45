"""The deployable image model's contract: what `sonotune deploy` logs and `sonotune predict` and `mlflow models
serve` load.

The logged model is an MLflow pyfunc (`ImageModelPyfunc`) that takes raw images — file paths, encoded file
bytes (base64 strings over HTTP), or uint8 arrays of any size, greyscale or RGB(A) — and returns a DataFrame
with the malignancy probability, the predicted label and the threshold (and, for the SVM head, its decision
value). Inside, every image goes through the cache's own steps: RGB uint8 (`data.images.to_rgb_uint8`), the
`prepare.resize` policy at the training input size (`data.images.square`), the backbone's `preprocess_input`.
Its artifacts are `keras_model` (.keras), `config` (`ModelConfig` as JSON) and, for the SVM head, `svm`
(joblib), written by `log_image_model`. Loading it needs the `sonotune` package importable (installed, or
`--env-manager local` in this project).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sonotune.errors import DataError
from sonotune.vocabulary import CLASS_NAMES

MODEL_NAME = "model"
PREDICT_BATCH = 32


@dataclass(frozen=True)
class ModelConfig:
    """Everything the model needs besides its weights to turn a raw image into a probability."""

    dataset: str
    backbone: str
    strategy: int
    classifier: str  # mlp | svm
    input_size: int
    resize: str  # stretch | pad
    threshold: float
    features: str = "pooled"  # svm: the Keras features the SVM reads (pooled | dense)


# ---------------------------------------------------------------- the model's input contract


def to_rgb_image(item):
    """One raw image as an RGB PIL image: a path, encoded bytes, a base64 string of them, or a pixel array."""
    from PIL import Image, UnidentifiedImageError

    from sonotune.data.images import to_rgb_uint8

    try:
        if isinstance(item, (bytes, bytearray)):
            image = Image.open(io.BytesIO(item))
        elif isinstance(item, (str, Path)):
            path = Path(item) if len(str(item)) < 4096 else None
            if path is not None and path.is_file():
                image = Image.open(path)
            else:
                image = Image.open(io.BytesIO(base64.b64decode(str(item), validate=True)))
        else:
            array = np.asarray(item)
            if array.ndim == 3 and array.shape[-1] == 1:
                array = array[..., 0]
            if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
                raise DataError(f"an image array must be H×W, H×W×1, H×W×3 or H×W×4 (got shape {array.shape})")
            if array.dtype != np.uint8 and array.ndim == 3:
                array = np.clip(array, 0, 255).astype(np.uint8)
            image = Image.fromarray(array if array.dtype == np.uint8 else array.astype(np.float32))
        image.load()
        return to_rgb_uint8(image)
    except (OSError, ValueError, binascii.Error, UnidentifiedImageError) as exc:
        shown = str(item)[:80] if isinstance(item, (str, Path)) else type(item).__name__
        raise DataError(f"{shown}: not an image ({exc})") from None


def as_image_list(model_input) -> list:
    """The items of a pyfunc input: a DataFrame (column `image` or `path`, else the first), a list, an array."""
    if isinstance(model_input, pd.DataFrame):
        column = next((c for c in ("image", "path") if c in model_input.columns), model_input.columns[0])
        return list(model_input[column])
    if isinstance(model_input, pd.Series):
        return list(model_input)
    if isinstance(model_input, np.ndarray) and model_input.dtype != object and model_input.ndim in (2, 3):
        return [model_input]  # one image
    if isinstance(model_input, dict):
        return as_image_list(model_input.get("image", model_input.get("path", [])))
    if isinstance(model_input, (str, bytes, Path)):
        return [model_input]
    return list(model_input)


# ---------------------------------------------------------------- the model itself


class ImageModel:
    """The Keras classifier (and, for the SVM head, the fitted sklearn model) behind the raw-image interface."""

    def __init__(self, keras_model, config: ModelConfig, svm=None):
        from sonotune.models.backbones import get_spec

        self.keras_model = keras_model
        self.config = config
        self.svm = svm
        self.preprocess = get_spec(config.backbone).preprocess()
        self._features = None

    @property
    def pipeline(self):
        """The fitted scaler → LinearSVC pipeline inside the calibrated SVM (what the decision value comes from)."""
        return self.svm.calibrated_classifiers_[0].estimator

    def inputs(self, images: list) -> np.ndarray:
        """Raw images → the network's preprocessed (n, size, size, 3) float32 input."""
        from sonotune.data.images import square

        squared = [square(to_rgb_image(item), self.config.input_size, self.config.resize) for item in images]
        return self.preprocess(np.stack(squared).astype(np.float32))

    def feature_extractor(self):
        from sonotune.models.head import feature_model

        if self._features is None:
            self._features = feature_model(self.keras_model)
        return self._features

    def scores(self, x: np.ndarray) -> pd.DataFrame:
        """Probability (and SVM decision value) for preprocessed inputs."""
        if self.config.classifier == "mlp":
            probability = self.keras_model.predict(x, batch_size=PREDICT_BATCH, verbose=0)[:, 1]
            frame = pd.DataFrame({"probability": probability.astype(np.float64)})
        else:
            features = self.feature_extractor().predict(x, batch_size=PREDICT_BATCH, verbose=0)[self.config.features]
            frame = pd.DataFrame({"probability": self.svm.predict_proba(features)[:, 1],
                                  "decision": self.pipeline.decision_function(features)})
        frame["predicted_label"] = np.where(frame["probability"] >= self.config.threshold, CLASS_NAMES[1], CLASS_NAMES[0])
        frame["threshold"] = self.config.threshold
        return frame

    def predict_images(self, images: list) -> pd.DataFrame:
        if not images:
            return pd.DataFrame(columns=["probability", "predicted_label", "threshold"])
        return self.scores(self.inputs(images))

    def gradcam(self, images: list) -> list[np.ndarray]:
        """One Grad-CAM map per image, at the image's own height × width, in [0, 1]."""
        from sonotune.gradcam import gradcam_maps, layer_for, mlp_target, resize_map, svm_target

        target = mlp_target if self.config.classifier == "mlp" else svm_target(self.pipeline, self.config.features)
        maps = gradcam_maps(self.keras_model, layer_for(self.config.backbone, self.keras_model), self.inputs(images),
                            target)
        sizes = [to_rgb_image(item).size for item in images]
        return [resize_map(cam, height, width) for cam, (width, height) in zip(maps, sizes)]


try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency; this keeps the module importable without it
    PythonModel = object


class ImageModelPyfunc(PythonModel):
    """MLflow pyfunc wrapper: artifacts `keras_model` (.keras), `config` (JSON) and, for the SVM, `svm` (joblib)."""

    def load_context(self, context):
        import joblib
        import keras

        config = ModelConfig(**json.loads(Path(context.artifacts["config"]).read_text()))
        svm = joblib.load(context.artifacts["svm"]) if "svm" in context.artifacts else None
        self.model = ImageModel(keras.saving.load_model(context.artifacts["keras_model"], compile=False), config, svm)

    # a DataFrame hint tells MLflow not to validate or convert the input (lists of arrays pass unchanged)
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.model.predict_images(as_image_list(model_input))


# ---------------------------------------------------------------- logging


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("mlflow", "keras", "tensorflow", "scikit-learn", "pillow", "numpy", "pandas", "joblib",
                    "matplotlib"):
        try:
            pins.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return pins


def log_image_model(model: ImageModel, registered_model: str | None = None):
    """Log `model` as a pyfunc to the active run (registered under `registered_model` if given); return ModelInfo."""
    import joblib
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        artifacts = {"keras_model": str(folder / "classifier.keras"), "config": str(folder / "config.json")}
        model.keras_model.save(artifacts["keras_model"])
        Path(artifacts["config"]).write_text(json.dumps(asdict(model.config), indent=2))
        if model.svm is not None:
            artifacts["svm"] = str(folder / "svm.joblib")
            joblib.dump(model.svm, artifacts["svm"])
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=ImageModelPyfunc(), artifacts=artifacts,
            registered_model_name=registered_model, pip_requirements=_pip_requirements(),
            metadata={"sonotune": asdict(model.config)},
        )
