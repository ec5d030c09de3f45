"""Shared fixtures: a throw-away copy of the repository for end-to-end runs, and the real dataset samples.
The helpers behind them live in tests/workspace.py (re-exported here for the tests that import them)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.workspace import (  # noqa: F401  (re-exported)
    BIN, GENERATED, PRETRAINED, ROOT, SHARED_DATASETS, copy_repo, project_env, recording_env, run, tiny_params,
)

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "repo", tiny_params())


@pytest.fixture(scope="session")
def demo_repro(tmp_path_factory) -> dict:
    """The demo's shape, tiny: one `dvc repro` of every stage (the pretrain stage's backbone is what finetune starts
    from), each stage's command recording the package files it imports (tests/import_recorder). Shared by the e2e
    test, which goes on to run experiments in it, and the deps test, which reads only `imports`."""
    repo = copy_repo(tmp_path_factory.mktemp("demo") / "repo", tiny_params(**{"finetune.weights": PRETRAINED}))
    imports = repo.parent / "imports"
    return {"repo": repo, "imports": imports, "out": run(["dvc", "repro"], repo, env=recording_env(imports)).stdout}


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
