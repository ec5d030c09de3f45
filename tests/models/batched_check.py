"""Run by tests/models/test_batched.py in a subprocess with KERAS_BACKEND=jax (Keras picks its backend at import).

Trains tiny VGG16 classifiers (32 px, 14 images, 2 epochs, batch 4) on two folds of different training-set sizes
and prints one JSON object: for each comparison, the largest weight difference relative to the weight's scale,
the training displacement it is measured against, and whether histories and best epochs agree. The test asserts.

    python tests/models/batched_check.py [equivalence] [dropout]   # both when none is named
    equivalence: dropout off, batched vs each fold alone (train_fold)
    dropout:     dropout on, two batched runs; a fold alone in its batch; train_fold
"""

from __future__ import annotations

import json
import sys
import time

import keras
import numpy as np

from sonotune.config import parse_params
from sonotune.cv import Fold
from sonotune.models.training import PrefixCache, build_fold_model, fold_seed, predict_outputs, train_fold, train_folds
from tests.workspace import tiny_params

BACKBONE, STRATEGY, N = "vgg16", 15, 14


def setup(dropout: float, class_weight: str = "none"):
    params = parse_params(tiny_params(**{
        "finetune.epochs": 2, "finetune.dense_units": 8, "finetune.batch_size": 4, "finetune.dropout": dropout,
        "finetune.parallel_folds": True, "finetune.class_weight": class_weight, "finetune.monitor": "val_loss",
    }))
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(N, 32, 32, 3)) * 50).astype(np.float32)
    y = np.array([0, 1] * 5 + [0, 0, 0, 1])
    folds = [Fold(index=0, fit=np.arange(8), val=np.arange(8, N), test=np.arange(8, N)),  # 8 = 4 + 4
             Fold(index=1, fit=np.arange(4, N), val=np.arange(4), test=np.arange(4))]  # 10 = 4 + 4 + 2 (fold 0 idle)
    return params, x, y, folds


def weights_of(model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w.value).copy() for w in model.weights]


def relative_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """max over tensors of max|a − b| / max|a| (a tensor's own scale)."""
    return max(float(np.max(np.abs(p - q)) / (np.max(np.abs(p)) + 1e-12)) for p, q in zip(a, b, strict=True))


def summary(trained, x, cache) -> dict:
    return {"weights": weights_of(trained.model), "history": trained.history, "best_epoch": trained.best_epoch,
            "monitored": trained.monitored,
            "probabilities": predict_outputs(trained.model, x, cache)["probabilities"]}


def compare(reference: dict, other: dict, initial: list[np.ndarray] | None = None) -> dict:
    history_gap = max(abs(a - b) for key in reference["history"]
                      for a, b in zip(reference["history"][key], other["history"][key], strict=True))
    result = {
        "weights": relative_difference(reference["weights"], other["weights"]),
        "history_keys_equal": sorted(reference["history"]) == sorted(other["history"]),
        "history": history_gap,
        "best_epoch_equal": reference["best_epoch"] == other["best_epoch"],
        "monitored": abs(reference["monitored"] - other["monitored"]),
        "probabilities": float(np.max(np.abs(reference["probabilities"] - other["probabilities"]))),
    }
    if initial is not None:  # the difference against how far training moved each tensor (frozen ones skipped)
        result["of_displacement"] = max(
            float(np.max(np.abs(a - b)) / np.max(np.abs(a - w0)))
            for a, b, w0 in zip(reference["weights"], other["weights"], initial, strict=True) if np.any(a != w0))
    return result


def batched(params, x, y, folds) -> list[dict]:
    cache = PrefixCache()
    return [summary(t, x, cache) for t in train_folds(params.finetune, params.seed, BACKBONE, STRATEGY, x, y, folds,
                                                        cache)]


def equivalence() -> dict:
    """Dropout off: the batch (with the prefix cache) against each fold trained alone by train_fold (Keras fit on
    the full model, no cache); balanced class weights, so the two folds also differ in their weights."""
    params, x, y, folds = setup(dropout=0.0, class_weight="balanced")
    together = batched(params, x, y, folds)
    out = {}
    for fold, batch_result in zip(folds, together):
        initial = weights_of(build_fold_model(params.finetune, BACKBONE, STRATEGY, fold_seed(params.seed, fold)))
        keras.backend.clear_session()
        alone = summary(train_fold(params.finetune, params.seed, BACKBONE, STRATEGY, x, y, fold, None), x, None)
        keras.backend.clear_session()
        out[f"fold{fold.index}"] = compare(alone, batch_result, initial)
    out["folds_differ"] = relative_difference(together[0]["weights"], together[1]["weights"])
    return out


def dropout() -> dict:
    """Dropout on: the same batch twice; fold 1 alone in its batch; fold 1 by train_fold (Keras fit)."""
    params, x, y, folds = setup(dropout=0.5)
    first, second = batched(params, x, y, folds), batched(params, x, y, folds)
    alone_in_batch = batched(params, x, y, folds[1:])[0]
    sequential = summary(train_fold(params.finetune, params.seed, BACKBONE, STRATEGY, x, y, folds[1], None), x, None)
    return {"rerun": [compare(a, b) for a, b in zip(first, second)],
            "alone_in_batch": compare(first[1], alone_in_batch),
            "sequential": compare(sequential, first[1])}


if __name__ == "__main__":
    assert keras.backend.backend() == "jax", "run with KERAS_BACKEND=jax"
    start = time.perf_counter()
    checks = {"equivalence": equivalence, "dropout": dropout}
    result = {name: checks[name]() for name in (sys.argv[1:] or checks)}
    result["seconds"] = time.perf_counter() - start
    print("RESULT " + json.dumps(result))
