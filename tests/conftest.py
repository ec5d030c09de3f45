"""Shared fixtures: a throw-away copy of the repository for end-to-end runs, and the real dataset samples.
The helpers behind them live in tests/workspace.py (re-exported here for the tests that import them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.workspace import (  # noqa: F401  (re-exported)
    BIN, GENERATED, ROOT, SHARED_DATASETS, copy_repo, project_env, run, tiny_params,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "repo", tiny_params())


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real dataset samples not found at {SHARED_DATASETS} (only CI and dev machines have them)")
    return SHARED_DATASETS


@pytest.fixture(scope="module")
def tiny_model():
    """A real, untrained deployable model (vgg16 at 32 px, MLP head) behind the serving contract."""
    import keras

    from sonotune.models.backbones import create_backbone
    from sonotune.models.head import HeadConfig, build_classifier, inference_copy
    from sonotune.serving import ImageModel, ModelConfig

    keras.utils.set_random_seed(0)
    classifier = build_classifier(create_backbone("vgg16", 32, None), HeadConfig(dense_units=8))
    config = ModelConfig("phantom", "vgg16", 0, "mlp", input_size=32, resize="stretch", threshold=0.5)
    yield ImageModel(inference_copy(classifier), config)
    keras.backend.clear_session()
