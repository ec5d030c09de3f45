"""models/batched.py: every fold of a configuration trained at once under JAX equals each fold trained alone.

Keras picks its backend at import, so the JAX runs happen in a subprocess (tests/models/batched_check.py,
KERAS_BACKEND=jax) that prints its measurements; the assertions are here. Tiny VGG16 (32 px, 14 images,
2 epochs, batch 4), two folds of different training-set sizes (8 and 10: the second's last batch has 2 images, and the
first sits that step out).

Tolerance: float rounding of float32 through Adam. The batched step runs vmapped kernels, whose summation
order differs from the single model's; Adam divides each update by sqrt(v) + 1e-7, so a gradient that is
rounding noise still moves its weight by up to the learning rate. Measured (2-core x86 CPU, jax 0.10.2,
keras 3.15.1): weights within 1e-4 of each tensor's scale and within 3e-3 of how far training moved that
tensor, history and monitored value within 2.4e-7, probabilities within 1.2e-7, best epochs equal; dropout on:
reruns bit-identical, a fold alone in its batch or by train_fold within 7e-5 of the scale. Asserted: weights
within 1e-3 of the scale and 2e-2 of the displacement, histories within 1e-5, same best epoch, probabilities
within 1e-4.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.workspace import ROOT

pytest.importorskip("jax", reason="jax is a dependency (pyproject.toml); the batched trainer needs it")

WEIGHT_TOLERANCE = 1e-3  # relative to each tensor's largest absolute value
HISTORY_TOLERANCE = 1e-5
PROBABILITY_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def measured() -> dict:
    """Both checks in one JAX subprocess (one import, compiled steps shared)."""
    return run_check()


def run_check(*names: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    completed = subprocess.run([sys.executable, str(ROOT / "tests/models/batched_check.py"), *names], cwd=ROOT,
                               env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def assert_same_training(comparison: dict, weights: float = WEIGHT_TOLERANCE) -> None:
    assert comparison["weights"] <= weights, comparison
    assert comparison["history_keys_equal"] and comparison["history"] <= HISTORY_TOLERANCE, comparison
    assert comparison["best_epoch_equal"] and comparison["monitored"] <= HISTORY_TOLERANCE, comparison
    assert comparison["probabilities"] <= PROBABILITY_TOLERANCE, comparison


def test_with_dropout_off_each_batched_model_equals_its_fold_trained_alone(measured):
    """Batched (prefix cache on, class weights balanced per fold) vs `train_fold` (Keras fit of the full model
    under JAX): the same weights, history, best epoch and predictions, per fold."""
    result = measured["equivalence"]
    for fold in ("fold0", "fold1"):
        assert_same_training(result[fold])
        assert result[fold]["of_displacement"] <= 0.02, result[fold]  # training moved the weights 50× further
    assert result["folds_differ"] > 0.1  # two different networks, not one trained twice


def test_with_dropout_on_results_are_reproducible_and_independent_of_the_batch(measured):
    """Dropout draws come from each model's own seed state: a rerun is identical, a fold trained in a batch of
    one equals it trained beside another fold, and both equal `train_fold`'s Keras fit."""
    result = measured["dropout"]
    for rerun in result["rerun"]:
        assert_same_training(rerun, weights=1e-6)
    assert_same_training(result["alone_in_batch"])
    assert_same_training(result["sequential"])
