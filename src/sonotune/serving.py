"""The deployable image model's contract: what `sonotune deploy` logs and `sonotune predict` and `sonotune serve`
load.

The logged model is an MLflow pyfunc (`ImageModelPyfunc`) that takes raw images — encoded file bytes (base64
strings over HTTP), or uint8 arrays of any size, greyscale or RGB(A); never a path, which a caller of the HTTP
server (`stages/serve.py`) could use to make it read the server's files — and returns a DataFrame
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
MAX_IMAGE_BYTES = 16 * 2**20  # one encoded image; ultrasound PNGs are well under 5 MiB
MAX_REQUEST_BYTES = 32 * 2**20  # one HTTP request body to `sonotune serve` (base64 adds a third)


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
    """One raw image as an RGB PIL image: encoded file bytes, a base64 string of them, or a pixel array.

    A string is only ever base64: the model never opens a path it is sent (a caller of the HTTP server could
    otherwise make it read the server's files). Encoded images over `MAX_IMAGE_BYTES` and images over
    `data.images.MAX_PIXELS` pixels are refused before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    from sonotune.data.images import MAX_PIXELS, to_rgb_uint8

    try:
        if isinstance(item, str):
            item = _base64_image(item)
        if isinstance(item, (bytes, bytearray)):
            if len(item) > MAX_IMAGE_BYTES:
                raise DataError(f"an encoded image of {len(item) / 2**20:.1f} MiB is over the "
                                f"{MAX_IMAGE_BYTES // 2**20} MiB limit")
            image = Image.open(io.BytesIO(item))
        elif isinstance(item, Path):
            raise DataError("a path is not an image: send the image file's bytes (base64 over HTTP)")
        else:
            image = _array_image(np.asarray(item))
        if image.width * image.height > MAX_PIXELS:
            raise DataError(f"{image.width}×{image.height} px is over the {MAX_PIXELS / 1e6:.0f} Mpx decode limit: "
                            "refused before decoding")
        image.load()
        return to_rgb_uint8(image)
    except Image.DecompressionBombError:
        raise DataError(f"the image declares over {MAX_PIXELS / 1e6:.0f} Mpx (the decode limit; a decompression "
                        "bomb?): refused before decoding") from None
    except UnidentifiedImageError:  # its message holds a memory address, nothing for the caller
        raise DataError("not an image (no image format Pillow reads)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"not an image ({exc})") from None


def _base64_image(text: str) -> bytes:
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise DataError(f"a base64 image of {len(text) / 2**20:.1f} MiB is over the {MAX_IMAGE_BYTES // 2**20} MiB "
                        "limit")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DataError("a string must be an image file's bytes in base64 (paths are never opened)") from None


def _array_image(array: np.ndarray):
    from PIL import Image

    from sonotune.data.images import MAX_PIXELS

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or array.dtype == object:
        raise DataError(f"an image array must be H×W, H×W×1, H×W×3 or H×W×4 numbers (got shape {array.shape})")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise DataError(f"{array.shape[1]}×{array.shape[0]} px is over the {MAX_PIXELS / 1e6:.0f} Mpx decode limit")
    if array.dtype != np.uint8 and array.ndim == 3:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(array if array.dtype == np.uint8 else array.astype(np.float32))


def _numbered(decode, item, index: int, count: int):
    """`decode(item)`, its DataError naming which image of a batch of several failed."""
    try:
        return decode(item)
    except DataError as exc:
        if count == 1:
            raise
        raise DataError(f"image {index + 1} of {count}: {exc}") from None


def read_image_file(path: Path) -> bytes:
    """A local image file's bytes for `to_rgb_image` (what `sonotune predict` sends its model); DataError when
    it cannot be read or is over `MAX_IMAGE_BYTES`."""
    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            raise DataError(f"{path}: {size / 2**20:.1f} MiB is over the {MAX_IMAGE_BYTES // 2**20} MiB image limit")
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None


def as_image_list(model_input) -> list:
    """The items of a pyfunc input: a DataFrame (column `image`, else the first), a list, an array."""
    if isinstance(model_input, pd.DataFrame):
        column = "image" if "image" in model_input.columns else model_input.columns[0]
        return list(model_input[column])
    if isinstance(model_input, pd.Series):
        return list(model_input)
    if isinstance(model_input, np.ndarray) and model_input.dtype != object and model_input.ndim in (2, 3):
        return [model_input]  # one image
    if isinstance(model_input, dict):
        return as_image_list(model_input.get("image", []))
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
        """The fitted scaler → linear SVC pipeline inside the calibrated SVM (what the decision value comes from)."""
        return self.svm.calibrated_classifiers_[0].estimator

    def inputs(self, images: list) -> np.ndarray:
        """Raw images → the network's preprocessed (n, size, size, 3) float32 input."""
        from sonotune.data.images import square

        squared = [square(_numbered(to_rgb_image, item, k, len(images)), self.config.input_size, self.config.resize)
                   for k, item in enumerate(images)]
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
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        try:
            return self.model.predict_images(as_image_list(model_input))
        except DataError as exc:  # the caller's fault: a 400 naming the image, not MLflow's "unexpected error"
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


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


def write_artifacts(model: ImageModel, folder: Path) -> dict[str, str]:
    """The pyfunc's artifacts (Keras model, config, SVM) written to `folder`; their names -> paths."""
    import joblib

    artifacts = {"keras_model": str(folder / "classifier.keras"), "config": str(folder / "config.json")}
    model.keras_model.save(artifacts["keras_model"])
    Path(artifacts["config"]).write_text(json.dumps(asdict(model.config), indent=2))
    if model.svm is not None:
        artifacts["svm"] = str(folder / "svm.joblib")
        joblib.dump(model.svm, artifacts["svm"])
    return artifacts


def log_image_model(model: ImageModel, registered_model: str | None = None):
    """Log `model` as a pyfunc to the active run (registered under `registered_model` if given); return ModelInfo."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        artifacts = write_artifacts(model, Path(tmp))
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=ImageModelPyfunc(), artifacts=artifacts,
            registered_model_name=registered_model, pip_requirements=_pip_requirements(),
            metadata={"sonotune": asdict(model.config)},
        )
