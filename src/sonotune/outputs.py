"""Stage outputs shared by `finetune` and `svm`: the folder (oof.csv, optional arrays), the DVC metrics JSON
and the ROC points for DVC plots. The folder is built beside its target and moved into place last, so a
crash never leaves a half-written output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from sonotune.layout import metrics_file, roc_file, stage_dir
from sonotune.plots import roc_points


def write_stage_outputs(dataset, backbone, strategy, classifier, oof: pd.DataFrame, per_fold, summary,
                        arrays: dict[str, np.ndarray] | None = None, extra: dict | None = None,
                        files: dict[str, Path] | None = None) -> None:
    """Write the stage's folder (oof.csv [+ features.npz] [+ `files`, name -> existing file moved in]),
    metrics JSON and ROC CSV, folder last-moved."""
    out_dir = stage_dir(dataset, backbone, strategy, classifier)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    oof.to_csv(staging / "oof.csv", index=False)
    if arrays:
        np.savez(staging / "features.npz", **arrays)
    for name, path in (files or {}).items():
        shutil.move(path, staging / name)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)
    metrics = {"mean": summary, "folds": per_fold} | (extra or {})
    metrics_file(dataset, backbone, strategy, classifier).write_text(json.dumps(metrics, indent=2) + "\n")
    roc_points(oof["y"], oof["score"]).to_csv(roc_file(dataset, backbone, strategy, classifier), index=False)
