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
