"""The deployable model of one configuration: refit on the whole dataset, logged as one MLflow model, registered.

Run as `sonotune deploy --dataset D --backbone B --strategy S --classifier mlp|svm` after `prepare` (and
`sonotune promote NAME [VERSION]` to point an alias at a version). The refit follows the study's protocol on all
images: a grouped, stratified validation split (`cv.val_fraction`) picks the best epoch, as inside each fold;
for the SVM head, C is chosen by grouped inner CV on the refit network's features, and Platt scaling fitted on
that inner CV's out-of-fold decision values turns the SVM's decision value into a probability. The study's
cross-validated metrics estimate how this procedure does on new data; they are copied onto the registered
version as tags.

The logged model is the serving contract of `sonotune.serving` (an MLflow pyfunc over raw images).
"""

from __future__ import annotations

import json

from sonotune import tracking
from sonotune.errors import DataError
from sonotune.serving import MODEL_NAME, PREDICT_BATCH, ImageModel, ModelConfig, log_image_model
from sonotune.vocabulary import CLASSIFIERS


# ---------------------------------------------------------------- refit


def refit(params, dataset: str, backbone: str, strategy: int, classifier: str):
    """Train the configuration on the whole dataset; return (ImageModel, metrics to log)."""
    from sonotune.cv import refit_split
    from sonotune.models.head import inference_copy
    from sonotune.models.training import PrefixCache, train_fold
    from sonotune.stages.inputs import load_training_inputs
    from sonotune.svm.calibration import calibrated_svm

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
        deployed.svm, c, inner_auc = calibrated_svm(params.svm, params.seed, features, y, groups)
        metrics |= {"svm_C": c, "svm_inner_cv_auc": inner_auc}
    return deployed, metrics


# ---------------------------------------------------------------- the registry


def registered_name(params, dataset: str) -> str:
    return params.deploy.registered_model or f"sonotune-{dataset}"


def cv_tags(dataset: str, backbone: str, strategy: int, classifier: str) -> dict[str, str]:
    """The study's cross-validated AUC of this configuration (if its stage ran here), as version tags."""
    from sonotune.layout import metrics_file

    path = metrics_file(dataset, backbone, strategy, classifier)
    if not path.is_file():
        return {}
    summary = json.loads(path.read_text()).get("mean", {})  # the metrics file: {"mean": {...}, "folds": [...], ...}
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


def require_alias(alias: str) -> None:
    """MLflow's rule for a registry alias (letters, digits, `_`, `-`; not `latest` nor `v<number>`), checked
    before the registry is asked, so a bad alias is named as such."""
    import re

    reserved = alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias)
    if reserved or not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", alias):
        raise DataError(f"alias {alias!r}: use letters, digits, '_' or '-' (not 'latest' nor v<number>), e.g. "
                        "--alias champion; nothing was changed")


def promote(name: str, version: str | None, alias: str) -> str:
    """Point `alias` at `version` of registered model `name` (default: the version with the best CV AUC tag);
    return the version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    require_alias(alias)
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
