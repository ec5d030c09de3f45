"""MLflow conventions: where runs go, how they are named, tagged and nested.

Tracking URI: `MLFLOW_TRACKING_URI` when set (a team server), else SQLite at `mlruns/mlflow.db` with
artifacts under `mlruns/artifacts`. One experiment per dataset; a parent run per (backbone, strategy,
classifier) carrying mean ± sd metrics; a nested child run per fold. Every run carries the tags `dataset`,
`backbone`, `strategy`, `classifier`, `fold`, `protocol`, `git_commit`, `dvc_exp`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCAL_STORE = Path("mlruns")


def local_uri() -> str:
    return f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local_uri()


def _uses_local_store() -> bool:
    # compared with the URI, not the variable's presence: mlflow.set_tracking_uri also sets the variable
    return tracking_uri() == local_uri()


def configure() -> str:
    """Point MLflow at the project's store; return the URI."""
    import mlflow

    if _uses_local_store():
        (LOCAL_STORE / "artifacts").mkdir(parents=True, exist_ok=True)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_name(dataset: str) -> str:
    return f"sonotune-{dataset}"


def ensure_experiment(dataset: str) -> str:
    """Id of the dataset's experiment, created (artifacts under mlruns/artifacts when local) if needed."""
    import mlflow

    name = experiment_name(dataset)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (LOCAL_STORE / "artifacts" / name).resolve().as_uri() if _uses_local_store() else None
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(dataset: str, backbone: str, strategy: int, classifier: str, protocol: str, fold: str) -> dict:
    return {
        "dataset": dataset,
        "backbone": backbone,
        "strategy": str(strategy),
        "classifier": classifier,
        "protocol": protocol,
        "fold": fold,
        "git_commit": git_commit(),
        "dvc_exp": os.environ.get("DVC_EXP_NAME", ""),
    }


def run_name(backbone: str, strategy: int, classifier: str, fold: int | None = None) -> str:
    base = f"{backbone}-{strategy}-{classifier}"
    return base if fold is None else f"{base}-fold{fold}"


@contextmanager
def parent_run(dataset: str, backbone: str, strategy: int, classifier: str, protocol: str, params: dict):
    """A parent run with tags and flattened params; ends FAILED (not RUNNING) if the body raises."""
    import mlflow

    configure()
    experiment_id = ensure_experiment(dataset)
    tags = run_tags(dataset, backbone, strategy, classifier, protocol, fold="all")
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name(backbone, strategy, classifier), tags=tags
    ) as run:
        mlflow.log_params(params)
        yield run


@contextmanager
def fold_run(parent, fold: int):
    import mlflow

    tags = dict(parent.data.tags)
    tags = {k: v for k, v in tags.items() if not k.startswith("mlflow.")} | {"fold": str(fold)}
    name = run_name(tags["backbone"], int(tags["strategy"]), tags["classifier"], fold)
    with mlflow.start_run(
        experiment_id=parent.info.experiment_id, run_name=name, nested=True, tags=tags
    ) as run:
        yield run


@contextmanager
def artifact_dir() -> Iterator[Path]:
    """A scratch folder whose files are logged as artifacts of the active run on exit."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)
        mlflow.log_artifacts(tmp)
