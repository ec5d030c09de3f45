"""The backbone built once per configuration (`BackbonePool`, weights from a file as ImageNet's would be):
a fold trained on the shared backbone equals the same fold trained on its own freshly built model, and folds
trained one after another through it leave no state in each other."""

import keras
import numpy as np
import pytest

from sonotune.config import parse_params
from sonotune.cv import Fold
from sonotune.models.backbones import create_backbone
from sonotune.models.training import PrefixCache, head_seed, predict_outputs, train_fold
from tests.models.test_prefix_cache import assert_same_training
from tests.workspace import tiny_params


def _weights_file(tmp_path, backbone: str) -> str:
    keras.utils.set_random_seed(7)
    path = str(tmp_path / f"{backbone}.weights.h5")
    create_backbone(backbone, 32, None).save_weights(path)
    keras.backend.clear_session()
    return path


def _data():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(16, 32, 32, 3)) * 50).astype(np.float32)
    y = np.arange(16) % 2
    folds = [Fold(index=0, fit=np.arange(8), val=np.arange(8, 12), test=np.arange(12, 16)),
             Fold(index=1, fit=np.arange(4, 12), val=np.arange(12, 16), test=np.arange(4))]
    return x, y, folds


def _train(weights, backbone, strategy, x, y, fold, cache, freeze_bn=False):
    params = parse_params(tiny_params(**{
        "finetune.input_size": 32, "finetune.weights": weights, "finetune.batch_size": 4, "finetune.epochs": 2,
        "finetune.dense_units": 16, "finetune.prefix_cache": cache is not None, "finetune.freeze_bn": freeze_bn,
    }))
    trained = train_fold(params.finetune, params.seed, backbone, strategy, x, y, fold, cache)
    features = predict_outputs(trained.model, x, cache)
    return trained, features


def _snapshot(trained, features):
    weights = [keras.ops.convert_to_numpy(w.value).copy() for w in trained.model.weights]
    return weights, trained.history, trained.best_epoch, {k: np.array(v) for k, v in features.items()}


@pytest.mark.parametrize(("backbone", "strategy", "freeze_bn"),
                         [("resnet50", 15, False), ("resnet50", 15, True), ("vgg16", 0, False)])
def test_folds_on_a_shared_backbone_equal_folds_on_their_own(tmp_path, backbone, strategy, freeze_bn):
    """freeze_bn: the BatchNormalization layers of the trained part hold no trainable weights, yet each fold owns
    them (only the constant part, before the first trainable layer, is shared)."""
    weights = _weights_file(tmp_path, backbone)
    x, y, folds = _data()

    def train(fold, cache):
        return _train(weights, backbone, strategy, x, y, fold, cache, freeze_bn)

    # fold 1 alone, the paper's way: its own backbone built and loaded, the whole model fitted
    alone = _snapshot(*train(folds[1], None))
    keras.backend.clear_session()
    # fold 1 first through a fresh shared backbone
    first = PrefixCache()
    fold1_first = _snapshot(*train(folds[1], first))
    keras.backend.clear_session()

    # fold 0, then fold 1, through one shared backbone
    shared = PrefixCache()
    trained0, features0 = train(folds[0], shared)
    fold0 = _snapshot(trained0, features0)
    keras.backend.clear_session()  # as iter_train_folds does between folds
    trained1, features1 = train(folds[1], shared)
    fold1_second = _snapshot(trained1, features1)

    assert shared.backbones.builds == 1 and shared.store.misses == 1
    layers0 = trained0.model.layers
    first_trainable = next(i for i, layer in enumerate(layers0) if layer.trainable_weights)
    constant0 = [layer for layer in layers0[:first_trainable] if layer.weights]
    assert constant0 and all(any(layer is other for other in trained1.model.layers) for layer in constant0)
    trainable0 = [layer for layer in trained0.model.layers if layer.trainable_weights]
    assert not any(layer is other for layer in trainable0 for other in trained1.model.layers)

    assert_same_training(fold1_first, fold1_second)  # no state leaks from fold 0 into fold 1
    assert_same_training(alone, fold1_second)  # the shared backbone trains what a fold's own model does
    for before, after in zip(fold0[0], trained0.model.weights, strict=True):  # fold 1 left fold 0's model as it was
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(after.value), before)
    assert not np.allclose(fold0[3]["probabilities"], fold1_second[3]["probabilities"])
    keras.backend.clear_session()


def test_random_backbones_are_not_shared_and_differ_by_fold():
    x, y, folds = _data()
    cache = PrefixCache()
    models = [_train(None, "vgg16", 0, x, y, fold, cache)[0].model for fold in folds]
    assert cache.backbones.builds == 0
    first_conv = [keras.ops.convert_to_numpy(m.get_layer("block1_conv1").kernel.value) for m in models]
    assert not np.allclose(first_conv[0], first_conv[1])
    assert head_seed(42) != head_seed(43) and head_seed(42) != 42
    keras.backend.clear_session()
