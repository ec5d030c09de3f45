"""The deployable model of one configuration: refit on the whole dataset, logged as one MLflow model, registered.

Run as `sonotune deploy --dataset D --backbone B --strategy S --classifier mlp|svm` after `prepare` (and
`sonotune promote NAME [VERSION]` to point an alias at a version). The refit follows the study's protocol on all
images: a grouped, stratified validation split (`cv.val_fraction`) picks the best epoch, as inside each fold;
for the SVM head, C is chosen by grouped inner CV on the refit network's features, and Platt scaling fitted on
that inner CV's out-of-fold decision values turns the SVM's decision value into a probability. The study's
cross-validated metrics estimate how this procedure does on new data; they are copied onto the registered
version as tags.

The logged model is an MLflow pyfunc (`ImageModelPyfunc`) that takes raw images — file paths, encoded file
bytes (base64 strings over HTTP), or uint8 arrays of any size, greyscale or RGB(A) — and returns a DataFrame
with the malignancy probability, the predicted label and the threshold (and, for the SVM head, its decision
value). Inside, every image goes through the cache's own steps: RGB uint8 (`data.images.to_rgb_uint8`), the
`prepare.resize` policy at the training input size (`data.images.square`), the backbone's `preprocess_input`.
Loading it needs the `sonotune` package importable (installed, or `--env-manager local` in this project).
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

from sonotune import tracking
from sonotune.errors import DataError

MODEL_NAME = "model"
CLASSIFIERS = ("mlp", "svm")
LABELS = ("benign", "malignant")
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
        frame["predicted_label"] = np.where(frame["probability"] >= self.config.threshold, LABELS[1], LABELS[0])
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


# ---------------------------------------------------------------- refit


def refit_split(y: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int):
    """The refit's Fold: every image trains, a grouped stratified validation split picks the epoch, no test."""
    from sonotune.cv import Fold, validation_split

    fit, val = validation_split(y, groups, np.arange(len(y)), val_fraction, seed)
    return Fold(index=0, fit=fit, val=val, test=np.array([], dtype=int))


def calibrated_svm(params, features: np.ndarray, y: np.ndarray, groups: np.ndarray):
    """C by the svm stage's grouped inner grid search, then Platt scaling on that inner CV's out-of-fold decision
    values (`ensemble=False`: one pipeline, refit on everything, plus one sigmoid). Returns (model, C, inner AUC)."""
    from sklearn.base import clone
    from sklearn.calibration import CalibratedClassifierCV
    from sonotune.svm.search import inner_folds, search_c, svm_pipeline

    estimator = svm_pipeline(params.svm.max_iter, params.seed)
    search = search_c(params.svm, params.seed, estimator, features, y, groups, name="deploy", storage=None)
    inner = inner_folds(params.svm.inner_splits, params.seed)
    splits = list(inner.split(features, y, groups))  # precomputed: CalibratedClassifierCV routes no groups
    model = CalibratedClassifierCV(clone(search.estimator), method="sigmoid", cv=splits, ensemble=False)
    return model.fit(features, y), search.best_c, search.inner_auc


def refit(params, dataset: str, backbone: str, strategy: int, classifier: str):
    """Train the configuration on the whole dataset; return (ImageModel, metrics to log)."""
    from sonotune.models.head import inference_copy
    from sonotune.models.training import PrefixCache, train_fold
    from sonotune.stages.inputs import load_training_inputs

    if classifier not in CLASSIFIERS:
        raise DataError(f"--classifier: expected one of {', '.join(CLASSIFIERS)} (got '{classifier}')")
    data = load_training_inputs(params.finetune, dataset, backbone)
    x, y, groups, size = data.x, data.y, data.groups, data.input_size
    fold = refit_split(y, groups, params.cv.val_fraction, params.seed)
    cache = PrefixCache() if params.finetune.prefix_cache else None
    model, _, best_epoch, monitored = train_fold(params.finetune, params.seed, backbone, strategy, x, y, fold, cache)
    config = ModelConfig(dataset, backbone, strategy, classifier, size, params.prepare.resize,
                         params.deploy.threshold, params.svm.features)
    deployed = ImageModel(inference_copy(model), config)
    metrics = {"best_epoch": best_epoch, f"best_{params.finetune.monitor}": monitored, "n_images": len(y),
               "n_fit": len(fold.fit), "n_val": len(fold.val)}
    if classifier == "svm":
        features = deployed.feature_extractor().predict(x, batch_size=PREDICT_BATCH, verbose=0)[params.svm.features]
        deployed.svm, c, inner_auc = calibrated_svm(params, features, y, groups)
        metrics |= {"svm_C": c, "svm_inner_cv_auc": inner_auc}
    return deployed, metrics


# ---------------------------------------------------------------- logging and the registry


def registered_name(params, dataset: str) -> str:
    return params.deploy.registered_model or f"sonotune-{dataset}"


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


def cv_tags(dataset: str, backbone: str, strategy: int, classifier: str) -> dict[str, str]:
    """The study's cross-validated AUC of this configuration (if its stage ran here), as version tags."""
    from sonotune.layout import metrics_file

    path = metrics_file(dataset, backbone, strategy, classifier)
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    return {f"cv_{key}": str(summary[key]) for key in ("auc_mean", "auc_sd") if key in summary}


def deploy(params, dataset: str, backbone: str, strategy: int, classifier: str) -> dict:
    """Refit, log and register the configuration's model; return its run id, URI, name and version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    tracking.configure()
    name = registered_name(params, dataset)
    tags = tracking.run_tags(dataset, backbone, strategy, classifier, params.protocol, fold="refit")
    run_params = {"dataset": dataset, "input_size": params.finetune.input_size, "resize": params.prepare.resize,
                  "threshold": params.deploy.threshold, "seed": params.seed} | {
        f"finetune.{k}": v for k, v in params.finetune.model_dump().items()}
    experiment_id = tracking.ensure_experiment(dataset)
    with mlflow.start_run(experiment_id=experiment_id, tags=tags | {"sonotune.deploy": "refit"},
                          run_name=f"{tracking.run_name(backbone, strategy, classifier)}-deploy") as run:
        mlflow.log_params(run_params | ({f"svm.{k}": v for k, v in params.svm.model_dump().items()}
                                        if classifier == "svm" else {}))
        model, metrics = refit(params, dataset, backbone, strategy, classifier)
        mlflow.log_metrics(metrics)
        info = log_image_model(model, registered_model=name)
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in ({k: v for k, v in tags.items() if k != "fold"}
                       | cv_tags(dataset, backbone, strategy, classifier)).items():
        client.set_model_version_tag(name, version, key, value)
    return {"run_id": run.info.run_id, "model_uri": f"runs:/{run.info.run_id}/{MODEL_NAME}", "name": name,
            "version": version, "metrics": metrics}


def promote(name: str, version: str | None, alias: str) -> str:
    """Point `alias` at `version` of registered model `name` (default: the version with the best CV AUC tag);
    return the version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    tracking.configure()
    client = MlflowClient()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        raise DataError(f"registered model '{name}': {str(exc).splitlines()[0]}") from None
    if not versions:
        raise DataError(f"registered model '{name}' not found (run `sonotune deploy` first)")
    if version is None:
        ranked = [v for v in versions if "cv_auc_mean" in v.tags]
        if not ranked:
            raise DataError(f"registered model '{name}': no version has a cv_auc_mean tag; name the VERSION")
        version = max(ranked, key=lambda v: (float(v.tags["cv_auc_mean"]), int(v.version))).version
    if str(version) not in {str(v.version) for v in versions}:
        known = ", ".join(sorted((str(v.version) for v in versions), key=int))
        raise DataError(f"registered model '{name}' has no version {version} (versions: {known})")
    client.set_registered_model_alias(name, alias, str(version))
    return str(version)
