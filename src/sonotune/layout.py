"""Where each stage writes, relative to the repository root (the paths dvc.yaml declares), and how a folder
output is written: built beside its target and swapped in last (`staged_dir`), never half-written."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RUNS_ROOT = Path("runs")
REPORTS_ROOT = Path("reports")
PRETRAIN_ROOT = Path("prepared") / "pretrain"  # the pretrain stage's backbones (finetune.weights can name them)


def config_dir(dataset: str, backbone: str, strategy: int) -> Path:
    return RUNS_ROOT / dataset / backbone / str(strategy)


def stage_dir(dataset: str, backbone: str, strategy: int, classifier: str) -> Path:
    """Folder output of the `finetune` (classifier `mlp`) or `svm` stage for one configuration."""
    return config_dir(dataset, backbone, strategy) / classifier


def metrics_file(dataset: str, backbone: str, strategy: int, classifier: str) -> Path:
    return config_dir(dataset, backbone, strategy) / f"{classifier}_metrics.json"


def roc_file(dataset: str, backbone: str, strategy: int, classifier: str) -> Path:
    return config_dir(dataset, backbone, strategy) / f"{classifier}_roc.csv"


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh `.<name>.staging` folder beside `target` to write into; on success it replaces `target`
    (one rename), on any error it is removed and `target` is left as it was."""
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
