"""Where each stage writes, relative to the repository root (the paths dvc.yaml declares)."""

from __future__ import annotations

from pathlib import Path

RUNS_ROOT = Path("runs")
REPORTS_ROOT = Path("reports")


def config_dir(dataset: str, backbone: str, strategy: int) -> Path:
    return RUNS_ROOT / dataset / backbone / str(strategy)


def stage_dir(dataset: str, backbone: str, strategy: int, classifier: str) -> Path:
    """Folder output of the `finetune` (classifier `mlp`) or `svm` stage for one configuration."""
    return config_dir(dataset, backbone, strategy) / classifier


def metrics_file(dataset: str, backbone: str, strategy: int, classifier: str) -> Path:
    return config_dir(dataset, backbone, strategy) / f"{classifier}_metrics.json"


def roc_file(dataset: str, backbone: str, strategy: int, classifier: str) -> Path:
    return config_dir(dataset, backbone, strategy) / f"{classifier}_roc.csv"
