"""models/training.py: one fold trained with the epoch chosen on its validation split, and the prediction pass.
(The prefix cache's exactness through `train_fold` is in test_prefix_cache.py.)"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from sonotune.config import parse_params
from sonotune.cv import Fold
from sonotune.models.training import (PrefixCache, better, fold_seed, iter_train_folds, predict_outputs, train_fold,
                                      train_folds)
from tests.workspace import tiny_params


def test_better_follows_the_monitor():
    assert better("val_auc", 0.8, 0.7) and not better("val_auc", 0.7, 0.8)
    assert better("val_loss", 0.3, 0.4) and not better("val_loss", 0.4, 0.3)


@pytest.mark.parametrize("monitor, best_of", [("val_auc", max), ("val_loss", min)])
def test_a_fold_keeps_its_best_epoch_and_predicts_every_image(monitor, best_of):
    params = parse_params(tiny_params(**{"finetune.epochs": 3, "finetune.dense_units": 8, "finetune.batch_size": 4,
                                         "finetune.monitor": monitor}))
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(12, 32, 32, 3)) * 50).astype(np.float32)
    y = np.arange(12) % 2
    fold = Fold(index=0, fit=np.arange(8), val=np.arange(8, 12), test=np.arange(8, 12))
    cache = PrefixCache()
    model, history, best_epoch, monitored = train_fold(params.finetune, params.seed, "vgg16", 15, x, y, fold, cache)
    assert len(history["loss"]) == 3 and history[monitor][best_epoch] == best_of(history[monitor])
    assert monitored == best_of(history[monitor])
    outputs = predict_outputs(model, x, cache)
    assert outputs["probabilities"].shape == (12, 2) and len(outputs["pooled"]) == len(outputs["dense"]) == 12
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    keras.backend.clear_session()


def test_a_folds_result_depends_on_its_repeat_and_index_not_on_the_batch():
    """The batch contract: one TrainedFold per fold, in order, each seeded by (repeat, fold) alone — fold 0 of
    repeat 1 trained after repeat 0's fold 0 (sharing a prefix cache) equals it trained alone in a fresh batch."""
    params = parse_params(tiny_params(**{"finetune.epochs": 2, "finetune.dense_units": 8, "finetune.batch_size": 4}))
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(12, 32, 32, 3)) * 50).astype(np.float32)
    y = np.arange(12) % 2
    parts = dict(fit=np.arange(8), val=np.arange(8, 12), test=np.arange(8, 12))
    first, second = Fold(index=0, **parts), Fold(index=0, repeat=1, **parts)
    assert (fold_seed(42, first), fold_seed(42, second), fold_seed(42, Fold(index=2, repeat=3, **parts))) == (42, 1042, 3044)

    cache = PrefixCache()
    batch = iter_train_folds(params.finetune, params.seed, "vgg16", 15, x, y, [first, second], cache)
    scores = [predict_outputs(trained.model, x, cache)["probabilities"] for trained in batch]
    fresh = PrefixCache()
    alone = train_folds(params.finetune, params.seed, "vgg16", 15, x, y, [second], fresh)
    assert len(alone) == 1 and len(alone[0].history["loss"]) == 2
    np.testing.assert_allclose(predict_outputs(alone[0].model, x, fresh)["probabilities"], scores[1], rtol=1e-5,
                               atol=1e-6)
    assert not np.allclose(scores[0], scores[1])  # the repeat changes the seed: a different network
    keras.backend.clear_session()


def test_balanced_class_weights_make_each_class_weigh_the_same():
    from sonotune.models.training import class_weights

    y = np.array([0] * 30 + [1] * 10)
    weights = class_weights("balanced", y)
    assert weights == {0: pytest.approx(40 / 60), 1: pytest.approx(40 / 20)}
    assert weights[0] * 30 == pytest.approx(weights[1] * 10)
    assert class_weights("none", y) is None


def test_balanced_training_changes_the_fit_and_stays_exact_with_the_prefix_cache():
    """class_weight reaches the loss (other weights than unweighted) in both fits, and the cached fit still
    matches the full model's."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(12, 32, 32, 3)) * 50).astype(np.float32)
    y = np.array([0] * 9 + [1] * 3)
    fold = Fold(index=0, fit=np.arange(12), val=np.arange(12), test=np.arange(12))
    trained = {}
    for policy, cache in (("none", None), ("balanced", None), ("balanced", PrefixCache())):
        params = parse_params(tiny_params(**{"finetune.epochs": 2, "finetune.dense_units": 8,
                                             "finetune.batch_size": 4, "finetune.class_weight": policy}))
        model = train_fold(params.finetune, params.seed, "vgg16", 15, x, y, fold, cache).model
        trained[(policy, cache is not None)] = [keras.ops.convert_to_numpy(w.value).copy() for w in model.weights]
        keras.backend.clear_session()
    assert any(not np.allclose(a, b) for a, b in zip(trained[("none", False)], trained[("balanced", False)]))
    for a, b in zip(trained[("balanced", False)], trained[("balanced", True)], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * (np.abs(a).max() + 1e-12))
