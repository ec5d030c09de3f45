"""Generated from the registry: every backbone builds with weights=None and matches the paper's Table 2."""

import keras
import pytest

from sonotune.errors import ConfigError
from sonotune.models.backbones import BACKBONES, create_backbone, get_spec
from sonotune.models.strategies import STRATEGIES, apply_strategy, frozen_layer_count, strategy_table

PAPER_TABLE2 = {  # the paper's Table 2, frozen layers per strategy
    "vgg16": [19, 16, 14, 10, 5, 3, 0],
    "vgg19": [22, 19, 16, 11, 6, 4, 0],
    "resnet50": [175, 149, 131, 88, 44, 26, 0],
    "resnet101": [345, 293, 259, 173, 86, 52, 0],
    "inceptionv3": [311, 264, 233, 156, 78, 47, 0],
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_builds_with_its_layer_count(name):
    spec = get_spec(name)
    model = create_backbone(name, input_size=max(spec.min_size, 75), weights=None)
    assert len(model.layers) == spec.layer_count
    assert model.output_shape[-1] > 0
    keras.backend.clear_session()


@pytest.mark.parametrize(("name", "strategy"), [(n, s) for n in PAPER_TABLE2 for s in STRATEGIES])
def test_table2_cell(name, strategy):
    expected = PAPER_TABLE2[name][STRATEGIES.index(strategy)]
    assert frozen_layer_count(name, BACKBONES[name].layer_count, strategy) == expected


def test_rounding_rule_for_other_backbones():
    assert frozen_layer_count("efficientnet", 100, 15) == 85
    assert frozen_layer_count("efficientnet", 10, 25) == round(7.5)


def test_apply_strategy_freezes_the_first_layers():
    model = create_backbone("resnet50", input_size=32, weights=None)
    n_frozen = apply_strategy(model, "resnet50", 15)
    assert n_frozen == 149
    assert not any(layer.trainable for layer in model.layers[:149])
    assert all(layer.trainable for layer in model.layers[149:])
    keras.backend.clear_session()


def test_freeze_bn_keeps_batchnorm_in_inference_mode():
    model = create_backbone("resnet50", input_size=32, weights=None)
    apply_strategy(model, "resnet50", 100, freeze_bn=True)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and not any(layer.trainable for layer in bns)
    keras.backend.clear_session()


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown backbone 'alexnet' \\(valid: inceptionv3, resnet101"):
        create_backbone("alexnet")


def test_missing_weights_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="weights file .*missing.h5 not found"):
        create_backbone("vgg16", 32, weights=str(tmp_path / "missing.h5"))


def test_imagenet_without_cache_or_network_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("sonotune.models.backbones._can_reach", lambda host, timeout=3.0: False)
    with pytest.raises(ConfigError, match="place vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 at"):
        create_backbone("vgg16", 32, weights="imagenet")


def test_strategy_table_lists_every_backbone_and_strategy():
    lines = strategy_table().splitlines()
    assert len(lines) == 1 + len(BACKBONES) * len(STRATEGIES)
    rows = {(line.split()[0], line.split()[1]): line.split() for line in lines[1:]}
    assert rows[("resnet50", "15%")][2:6] == ["149", "26", "12.09M", "conv5_block1_0_conv"]
    assert rows[("vgg16", "25%")][2:] == ["14", "5", "7.08M", "block4_pool", "(block5_conv1)"]
    assert rows[("vgg16", "0%")][4] == "0.00M" and "head only" in " ".join(rows[("vgg16", "0%")])
    for name in BACKBONES:
        assert rows[(name, "100%")][2] == "0" and int(rows[(name, "100%")][3]) == BACKBONES[name].layer_count


def test_the_shipped_layer_inventory_is_what_keras_builds():
    """`sonotune strategies` reads backbone_layers.json instead of building the models: it must equal Keras's."""
    import json

    from sonotune.models.strategies import LAYERS_FILE, layer_inventory

    assert json.loads(LAYERS_FILE.read_text()) == layer_inventory(), (
        "regenerate: python -c 'from sonotune.models.strategies import write_layer_inventory; write_layer_inventory()'")


def test_the_strategy_table_imports_no_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from sonotune.cli import main; assert main(['strategies']) == 0; "
            "assert not {'tensorflow', 'keras'} & set(sys.modules), 'TensorFlow imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "resnet101" in done.stdout


def test_imagenet_check_is_fast_without_network(tmp_path, monkeypatch):
    """The real reachability check (no stub): here DNS fails at once; a dead resolver is cut at the timeout."""
    import time

    from sonotune.models.backbones import _can_reach

    started = time.monotonic()
    _can_reach("storage.googleapis.com", timeout=2.0)
    assert time.monotonic() - started < 3.0
