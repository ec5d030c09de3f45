"""Where each stage writes, relative to the repository root (the paths dvc.yaml declares), and how a folder
output is written: built beside its target and swapped in last (`staged_dir`), never half-written."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sonotune.errors import SonotuneError

RUNS_ROOT = Path("runs")
OUTPUT_RESERVE_BYTES = 1_000_000_000  # free disk every training preflight asks for (models, features, reports, MLflow
# artifacts): a clear minimum, not a bound; prepare.output_bytes adds the image caches
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
    (renames: the old one set aside, the new one moved in, the old one deleted), on any error it is removed and
    `target` is left as it was; a `target` that cannot be replaced is one line (SonotuneError)."""
    staging = target.with_name(f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replaced = target.with_name(f".{target.name}.replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    try:
        if target.exists():
            target.rename(replaced)
        try:
            staging.rename(target)
        except OSError:
            if replaced.exists():
                replaced.rename(target)
            raise
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise SonotuneError(f"{target}/: cannot replace it ({exc.strerror or type(exc).__name__}); it is left as it "
                            "was and finished work is kept: make it replaceable (permissions, chattr -i, a process "
                            "holding it) and rerun") from None
    shutil.rmtree(replaced, ignore_errors=True)
