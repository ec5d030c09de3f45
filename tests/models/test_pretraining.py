"""Pretraining on the phantom's source task: the source never repeats a study image, the split is stratified,
and a pretrained backbone's weights file loads into the backbone `finetune.weights` builds (real Keras, 32 px)."""

import keras
import numpy as np
import pytest

from sonotune.config import Pretrain
from sonotune.data.phantom import _image_rng, simulate_bmode, simulate_source
from sonotune.errors import ConfigError
from sonotune.models.backbones import create_backbone, resolve_weights, get_spec
from sonotune.models.pretraining import (phantom_source, pretrain_backbone, recalibrate_batchnorm,
                                         save_backbone_weights, source_split)
from sonotune.vocabulary import CLASS_NAMES

TINY = Pretrain(n_images=16, image_size=48, epochs=1, batch_size=8)


def test_the_source_never_repeats_a_study_image():
    """Leakage check: every source image differs from every study image of the same seed (the study draws
    image i of a class from default_rng([seed, class, i]), the source from its own stream)."""
    seed, size = 42, 48
    source, labels = simulate_source(24, size, seed)
    study = [simulate_bmode(_image_rng(seed, name, i), size, name == "malignant")
             for name in CLASS_NAMES for i in range(24)]
    study_bytes = {image.tobytes() for image in study}
    assert not any(image.tobytes() in study_bytes for image in source)
    assert labels.tolist() == [0, 1] * 12  # balanced, alternating


def test_the_source_is_deterministic_by_seed():
    a, _ = simulate_source(4, 32, seed=1)
    b, _ = simulate_source(4, 32, seed=1)
    c, _ = simulate_source(4, 32, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not any(np.array_equal(x, z) for x, z in zip(a, c))


def test_phantom_source_is_resized_like_the_study():
    task = phantom_source(TINY, input_size=32, seed=0)
    assert task.images.shape == (16, 32, 32, 3) and task.images.dtype == np.uint8
    assert np.array_equal(task.images[..., 0], task.images[..., 2])  # greyscale made RGB, as prepare does
    assert task.y.sum() == 8


@pytest.mark.parametrize("fraction", [0.2, 0.5])
def test_source_split_is_stratified_and_disjoint(fraction):
    y = np.array([0, 1] * 20)
    fit, val = source_split(y, fraction, seed=3)
    assert not set(fit) & set(val) and len(fit) + len(val) == len(y)
    assert y[val].sum() == len(val) // 2 == round(20 * fraction)


def test_source_split_keeps_both_sides_of_a_tiny_class():
    fit, val = source_split(np.array([0, 0, 0, 1, 1]), 0.1, seed=0)
    assert set(np.array([0, 0, 0, 1, 1])[fit]) == {0, 1} == set(np.array([0, 0, 0, 1, 1])[val])


def test_pretrained_weights_load_into_the_study_backbone(tmp_path):
    """Pretrain at 32 px, save, and build the backbone from the file (as finetune does) at 32 and 48 px."""
    result = pretrain_backbone(TINY, "vgg16", 32, phantom_source(TINY, 32, seed=0), seed=0)
    assert set(result.history) >= {"loss", "auc", "val_loss", "val_auc"} and len(result.history["val_auc"]) == 1
    assert 0.0 <= result.best_val_auc <= 1.0
    path = save_backbone_weights(result.backbone, tmp_path / "pretrain" / "vgg16.weights.h5")
    assert path.is_file() and not list(path.parent.glob(".*"))  # no temporary file left behind
    trained = [w.copy() for w in result.backbone.get_weights()]
    keras.backend.clear_session()
    for size in (32, 48):
        template = str(tmp_path / "pretrain" / "{backbone}.weights.h5")
        loaded = create_backbone("vgg16", size, template)
        assert all(np.array_equal(a, b) for a, b in zip(trained, loaded.get_weights()))
        keras.backend.clear_session()
    fresh = create_backbone("vgg16", 32, None)
    assert not np.array_equal(fresh.get_weights()[0], trained[0])  # random init differs: the file was used
    keras.backend.clear_session()


def test_a_weights_template_names_the_backbones_file(tmp_path):
    (tmp_path / "resnet50.weights.h5").write_bytes(b"")
    template = str(tmp_path / "{backbone}.weights.h5")
    assert resolve_weights(get_spec("resnet50"), template) == str(tmp_path / "resnet50.weights.h5")
    with pytest.raises(ConfigError, match=r"vgg16\.weights\.h5 not found \(made by `sonotune pretrain`"):
        resolve_weights(get_spec("vgg16"), str(tmp_path / "pretrain" / "{backbone}.weights.h5"))


def test_save_backbone_weights_needs_a_keras_weights_name(tmp_path):
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        save_backbone_weights(object(), tmp_path / "vgg16.h5")


def test_recalibrated_batchnorm_makes_inference_match_the_batch_statistics():
    """After `recalibrate_batchnorm` on one batch, inference mode normalises with that batch's own statistics, so
    its features equal training mode's on the batch; before it (fresh moving statistics) they do not."""
    keras.utils.set_random_seed(0)
    base = create_backbone("resnet50", 32, None)
    x = get_spec("resnet50").preprocess()(np.random.default_rng(0).uniform(0, 255, (64, 32, 32, 3)).astype("float32"))
    batch = keras.ops.convert_to_numpy(base(x, training=True))
    assert not np.allclose(keras.ops.convert_to_numpy(base(x, training=False)), batch, rtol=1e-3, atol=1e-3)
    weights = [w.copy() for w in base.get_weights()]
    assert recalibrate_batchnorm(base, x, batch_size=64) == 53  # ResNet50's BatchNormalization layers
    np.testing.assert_allclose(keras.ops.convert_to_numpy(base(x, training=False)), batch, rtol=1e-3, atol=1e-3)
    assert [layer.momentum for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)] == [0.99] * 53
    changed = [not np.array_equal(a, b) for a, b in zip(weights, base.get_weights())]
    assert sum(changed) == 2 * 53  # the moving mean and variance of each BN layer, nothing else


def test_recalibration_averages_the_batches_and_leaves_vgg_alone():
    keras.utils.set_random_seed(0)
    base = create_backbone("resnet50", 32, None)
    x = np.random.default_rng(1).normal(size=(96, 32, 32, 3)).astype("float32")
    first = next(layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))
    conv = keras.Model(base.input, base.get_layer(first.name).input)
    halves = [keras.ops.convert_to_numpy(conv(x[i:i + 48])).mean(axis=(0, 1, 2)) for i in (0, 48)]
    recalibrate_batchnorm(base, x, batch_size=48)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first.moving_mean), np.mean(halves, axis=0), rtol=1e-4,
                               atol=1e-5)
    assert recalibrate_batchnorm(create_backbone("vgg16", 32, None), x) == 0


def test_pretraining_with_frozen_batchnorm_trains_the_convolutions_and_leaves_every_bn_layer_as_initialised():
    """`pretrain.freeze_bn`: BatchNormalization stays the identity it was initialised to (moving mean 0,
    variance 1, gamma 1, beta 0: no batch statistics, none re-estimated) while the convolutions train."""
    frozen = Pretrain(n_images=16, image_size=48, epochs=1, batch_size=8, freeze_bn=True)
    keras.utils.set_random_seed(0)
    initial = create_backbone("resnet50", 32, None)
    start = {w.path: keras.ops.convert_to_numpy(w).copy() for w in initial.weights}
    keras.backend.clear_session()
    result = pretrain_backbone(frozen, "resnet50", 32, phantom_source(frozen, 32, seed=0), seed=0)
    bn = [layer for layer in result.backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bn) == 53 and not any(layer.trainable for layer in bn)
    for layer in bn:
        for name, value in (("moving_mean", 0.0), ("moving_variance", 1.0), ("gamma", 1.0), ("beta", 0.0)):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(getattr(layer, name)), value)
    kernel = result.backbone.get_layer("conv1_conv").kernel
    assert not np.array_equal(keras.ops.convert_to_numpy(kernel), start[kernel.path])  # the convolutions trained
    keras.backend.clear_session()
