"""Stage `pretrain`: a backbone trained on the phantom's source task, for `finetune.weights` to start from.

Run as `sonotune pretrain --backbone B [--params params.yaml]`. Simulates `pretrain.n_images` fresh phantom cases
(a random stream no study image comes from: data/phantom.py `SOURCE_STREAM`), trains the backbone from random
init on benign vs malignant with the best epoch picked on held-out source images, and writes
`prepared/pretrain/B.weights.h5` (the backbone's weights: `finetune.weights: prepared/pretrain/{backbone}.weights.h5`
names it) and `prepared/pretrain/B.json` (DVC metrics: held-out source AUC per epoch, sizes; the wall-clock seconds go to MLflow only, so two machines
write the same file). Each file is written whole or not at all. `pretrain.epochs: 0` saves the seeded random
initialisation instead (the stage's cost while `finetune.weights` does not name its output). Logs one run to the MLflow experiment `sonotune-pretrain`.
Says what it does while it works: a line before the simulation, a progress bar over the epochs (loss, held-out AUC).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tqdm.auto import tqdm

from sonotune import tracking
from sonotune.config import Params, flatten
from sonotune.errors import require_space, require_writable
from sonotune.layout import OUTPUT_RESERVE_BYTES, PRETRAIN_ROOT
from sonotune.models.backbones import check_backbone, get_spec
from sonotune.models.pretraining import (
    phantom_source,
    pretrain_backbone,
    save_backbone_weights,
    untrained_backbone,
)

EXPERIMENT = "pretrain"  # MLflow experiment sonotune-pretrain


def weights_file(backbone: str, root: Path = PRETRAIN_ROOT) -> Path:
    return root / f"{backbone}.weights.h5"


def report_file(backbone: str, root: Path = PRETRAIN_ROOT) -> Path:
    return root / f"{backbone}.json"


def pretrain_input_size(params: Params, backbone: str) -> int:
    """`pretrain.input_size`, else `finetune.input_size`, else the backbone's native size."""
    return params.pretrain.input_size or params.finetune.input_size or get_spec(backbone).native_size


def _log_run(params: Params, backbone: str, size: int, report: dict, weights: Path) -> None:
    import mlflow

    tracking.configure()
    experiment_id = tracking.ensure_experiment(EXPERIMENT)
    tags = {"backbone": backbone, "stage": "pretrain", "git_commit": tracking.git_commit()}
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{backbone}-pretrain", tags=tags):
        mlflow.log_params(flatten(params.pretrain, "pretrain.") | {"seed": params.seed, "input_size": size,
                                                                   "backbone": backbone})
        history = report["history"]
        for step, (auc, val_auc) in enumerate(zip(history.get("auc", []), history.get("val_auc", []))):
            mlflow.log_metrics({"source_auc": auc, "source_val_auc": val_auc}, step=step)
        mlflow.log_metric("seconds", report["seconds"])
        if report["best_source_val_auc"] is not None:
            mlflow.log_metric("best_source_val_auc", report["best_source_val_auc"])
        mlflow.log_artifact(str(weights))


def run_pretrain(params: Params, backbone: str, root: Path = PRETRAIN_ROOT) -> dict:
    """Pretrain `backbone`, write its weights and report under `root`, log the run; return the report with the
    wall-clock `seconds` (in MLflow and this return value, never in the DVC-tracked file)."""
    cfg = params.pretrain
    size = pretrain_input_size(params, backbone)
    check_backbone(backbone, size, None)  # an unknown backbone or a too-small size stops before any work
    require_writable(root, "the pretrained backbones")
    require_space(root, OUTPUT_RESERVE_BYTES, "the pretrained backbones")
    started = time.perf_counter()
    if cfg.epochs:
        from tqdm.keras import TqdmCallback

        tqdm.write(f"pretrain {backbone}: simulating {cfg.n_images} phantom source cases at {size} px, then "
                   f"{cfg.epochs} epochs from random init")
        task = phantom_source(cfg, size, params.seed, params.prepare.resize)
        bar = TqdmCallback(epochs=cfg.epochs, verbose=0, desc=f"pretrain {backbone}", unit="epoch", leave=False)
        result = pretrain_backbone(cfg, backbone, size, task, params.seed, callbacks=(bar,))
    else:
        result = untrained_backbone(backbone, size, params.seed)
    weights = save_backbone_weights(result.backbone, weights_file(backbone, root))
    report = {
        "backbone": backbone, "source": cfg.source, "n_images": cfg.n_images if cfg.epochs else 0,
        "input_size": size, "epochs": cfg.epochs, "best_epoch": result.best_epoch + 1,
        "best_source_val_auc": None if not cfg.epochs else round(result.best_val_auc, 4),
        "history": {key: [round(v, 4) for v in values] for key, values in result.history.items()},
    }
    path = report_file(backbone, root)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)
    report = report | {"seconds": round(time.perf_counter() - started, 1)}
    _log_run(params, backbone, size, report, weights)
    return report
