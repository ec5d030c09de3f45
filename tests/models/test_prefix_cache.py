"""The frozen-prefix cache trains the same weights, metrics and features as the full model's fit.

Exactness runs `models.training.train_fold` (the stage's own code) with `prefix_cache` off and on, for every
backbone at two strategies, on tiny random images (32 px; InceptionV3 at its 75 px minimum), 2 epochs.
"""

import logging

import keras
import numpy as np
import pytest

from sonotune.config import parse_params
from sonotune.cv import Fold
from sonotune.models.backbones import BACKBONES
from sonotune.models.training import PrefixCache, predict_outputs, train_fold
from sonotune.models.prefix_cache import (
    ActivationStore, SuffixPool, find_cut, fit_with_prefix_cache,
    split_model, structure_signature,
)
from tests.workspace import tiny_params

RTOL = 1e-5  # float32; on the CI CPU the two paths agree bit for bit (docs/benchmarks.md)


def _params(size: int, prefix_cache: bool):
    return parse_params(tiny_params(**{
        "finetune.input_size": size, "finetune.prefix_cache": prefix_cache, "finetune.batch_size": 4,
        "finetune.dense_units": 16,
    }))


def _data(size: int, n: int = 12):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(n, size, size, 3)) * 50).astype(np.float32)
    y = np.arange(n) % 2
    return x, y, Fold(index=0, fit=np.arange(8), val=np.arange(8, 12), test=np.arange(8, 12))


def _train(backbone, strategy, size, cache: PrefixCache | None, x, y, fold):
    params = _params(size, cache is not None)
    model, history, best_epoch, _ = train_fold(params.finetune, params.seed, backbone, strategy, x, y, fold, cache)
    features = predict_outputs(model, x, cache)
    weights = [keras.ops.convert_to_numpy(w.value).copy() for w in model.weights]
    keras.backend.clear_session()
    return weights, history, best_epoch, features


def assert_same_training(full, cached):
    """Two (weights, history, best_epoch, features) of one fold agree to RTOL (also used by test_shared_backbone)."""
    for a, b in zip(full[0], cached[0], strict=True):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=RTOL * (np.abs(a).max() + 1e-12))
    assert cached[2] == full[2]
    for key in full[1]:
        np.testing.assert_allclose(cached[1][key], full[1][key], rtol=RTOL, atol=1e-7)
    for key in full[3]:
        np.testing.assert_allclose(cached[3][key], full[3][key], rtol=RTOL, atol=RTOL * np.abs(full[3][key]).max())


@pytest.mark.parametrize(("backbone", "strategy"), [(b, s) for b in sorted(BACKBONES) for s in (0, 15)])
def test_cached_training_matches_the_full_model(backbone, strategy):
    size = max(32, BACKBONES[backbone].min_size)
    x, y, fold = _data(size)
    full = _train(backbone, strategy, size, None, x, y, fold)
    cache = PrefixCache()
    cached = _train(backbone, strategy, size, cache, x, y, fold)
    assert cache.store.misses == 1  # training extracted the prefix; feature extraction reused it
    assert_same_training(full, cached)


def test_a_cache_hit_trains_like_a_miss():
    """Same frozen weights (same seed) and same images: the second fold reuses the activations, same result."""
    x, y, fold = _data(32)
    full = _train("resnet50", 15, 32, None, x, y, fold)
    cache = PrefixCache()
    _train("resnet50", 15, 32, cache, x, y, fold)
    hits = cache.store.hits
    again = _train("resnet50", 15, 32, cache, x, y, fold)
    assert cache.store.hits >= hits + 2
    assert_same_training(full, again)


def test_later_folds_reuse_the_compiled_suffix_and_train_like_the_full_model():
    """Folds 0 and 1 (different seeds: other head weights, dropout draws and shuffles) through one compiled
    suffix match the full model fold by fold, and training fold 1 leaves fold 0's model untouched."""
    x, y, fold0 = _data(32, n=16)
    fold1 = Fold(index=1, fit=np.arange(4, 16), val=np.arange(4), test=np.arange(4))
    full = [_train("vgg16", 15, 32, None, x, y, fold) for fold in (fold0, fold1)]
    cache = PrefixCache()
    params = _params(32, True)
    model0 = train_fold(params.finetune, params.seed, "vgg16", 15, x, y, fold0, cache)[0]
    predict_outputs(model0, x, cache)
    trained0 = [keras.ops.convert_to_numpy(w.value).copy() for w in model0.weights]
    hits = cache.suffixes.hits
    cached1 = _train("vgg16", 15, 32, cache, x, y, fold1)
    assert cache.suffixes.hits >= hits + 2  # fold 1's training and its feature extraction reused fold 0's
    for before, after in zip(trained0, model0.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(after.value), before)
    np.testing.assert_array_equal(trained0[-1], full[0][0][-1])  # fold 0's own result, bit for bit here
    assert_same_training(full[1], cached1)


def test_the_structure_signature_ignores_names_but_not_shapes_or_frozen_layers():
    keras.utils.set_random_seed(0)
    first, second = _residual_model(), _residual_model()  # same structure, auto-generated names differ
    assert first.layers[-1].name != second.layers[-1].name
    assert structure_signature(first) == structure_signature(second)
    second.get_layer("trainable_conv").trainable = False
    assert structure_signature(first) != structure_signature(second)
    assert structure_signature(first, {"optimizer": "adam"}) != structure_signature(first, {"optimizer": "sgd"})
    pool = SuffixPool(capacity=1)
    borrowed = pool.borrow(first, first.get_compile_config())
    assert borrowed is not first and pool.borrow(_residual_model(), first.get_compile_config()) is borrowed
    keras.backend.clear_session()


def _residual_model(dropout_first: bool = False):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Dropout(0.5, name="early_dropout")(inputs) if dropout_first else inputs
    a = keras.layers.Conv2D(4, 3, padding="same", name="frozen_conv")(x)
    b = keras.layers.Conv2D(4, 3, padding="same", name="trainable_conv")(a)
    merged = keras.layers.Add(name="add")([a, b])  # `a` crosses the cut twice: into the conv and the shortcut
    pooled = keras.layers.GlobalMaxPooling2D()(merged)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(pooled))
    model.get_layer("frozen_conv").trainable = False
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model


def test_the_cut_is_every_frozen_tensor_a_trainable_layer_consumes():
    model = _residual_model()
    cut, frozen, reason = find_cut(model)
    assert reason is None
    assert [t for t in cut] == [model.get_layer("frozen_conv").output]
    assert [layer.name for layer in frozen] == ["frozen_conv"]
    keras.backend.clear_session()


def test_nothing_random_is_cached_and_the_fallback_is_logged(caplog):
    model = _residual_model(dropout_first=True)  # dropout draws anew each step: nothing before it is constant
    cut, _, reason = find_cut(model)
    assert reason == "no frozen layer before the first trainable one"
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
    y = keras.utils.to_categorical(np.arange(8) % 2, 2)
    with caplog.at_level(logging.WARNING, logger="sonotune.models.prefix_cache"):
        history = fit_with_prefix_cache(model, x, y, np.arange(6), np.arange(6, 8), store=ActivationStore(),
                                        suffixes=SuffixPool(), epochs=1, verbose=0)
    assert "training the full model (no frozen layer before the first trainable one)" in caplog.text
    assert len(history.history["loss"]) == 1
    keras.backend.clear_session()


def test_activations_beyond_the_ram_budget_go_to_a_memmap_with_the_same_result(tmp_path):
    x = np.random.default_rng(1).normal(size=(8, 8, 8, 3)).astype(np.float32)
    y = keras.utils.to_categorical(np.arange(8) % 2, 2)
    results = []
    for budget in (None, 0):
        keras.utils.set_random_seed(3)
        model = _residual_model()
        store = ActivationStore(ram_budget_bytes=budget, spill_dir=str(tmp_path))
        fit_with_prefix_cache(model, x, y, np.arange(6), np.arange(6, 8), store=store, suffixes=SuffixPool(),
                              epochs=2, batch_size=2, verbose=0)
        assert isinstance(store.arrays[0], np.memmap) == (budget == 0)
        results.append([keras.ops.convert_to_numpy(w.value) for w in model.weights])
        store.clear()
        keras.backend.clear_session()
    assert not list(tmp_path.iterdir())  # the spilled files went with the entry
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_images_and_frozen_weights_are_hashed_once_per_object_and_recognised_by_content():
    """Folds reuse one array object and one shared backbone: one digest for all of them; an equal copy of the
    images is hashed anew and hits; changed images, or new frozen weights, miss."""
    keras.utils.set_random_seed(0)
    split, _ = split_model(_residual_model())
    x = np.random.default_rng(2).normal(size=(6, 8, 8, 3)).astype(np.float32)
    store = ActivationStore()
    first = store.get(split, x)
    for _ in range(3):
        assert store.get(split, x) is first
    assert (store.digests, store.hits, store.misses) == (1, 3, 1)
    assert store.get(split, x.copy()) is first
    assert (store.digests, store.hits, store.misses) == (2, 4, 1)
    changed = x.copy()
    changed[0, 0, 0, 0] += 1
    store.get(split, changed)
    assert (store.digests, store.misses) == (3, 2)
    keras.utils.set_random_seed(1)
    other, _ = split_model(_residual_model())  # a newly built backbone: other frozen weights
    store.get(other, changed)
    assert (store.digests, store.misses) == (4, 3)
    keras.backend.clear_session()
