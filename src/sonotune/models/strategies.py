"""Fine-tuning strategies: the fraction of a backbone's last layers left trainable, as frozen-layer counts.

The paper's Table 2 is shipped as data for its five backbones (no single rounding rule reproduces it);
any other backbone uses round(n × (1 − f)). `strategy_table` (the `sonotune strategies` command) reads the
backbones' layers from a generated file (`backbone_layers.json`, kept equal to Keras by tests/models/test_backbones.py)
so that printing a table does not import TensorFlow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sonotune.vocabulary import STRATEGIES


def frozen_layer_count(backbone: str, n_layers: int, strategy: int) -> int:
    """Number of leading layers of `model.layers` that stay frozen under `strategy` % trainable."""
    from sonotune.models.backbones import BACKBONES

    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES} (got {strategy})")
    spec = BACKBONES.get(backbone)
    if spec is not None and spec.table2 and n_layers == spec.layer_count:
        return spec.table2[strategy]
    return round(n_layers * (1 - strategy / 100))


def apply_strategy(backbone_model, backbone: str, strategy: int, freeze_bn: bool = False) -> int:
    """Freeze the first layers of `backbone_model` per the strategy; return how many were frozen."""
    n_frozen = frozen_layer_count(backbone, len(backbone_model.layers), strategy)
    for index, layer in enumerate(backbone_model.layers):
        layer.trainable = index >= n_frozen
    if freeze_bn:
        freeze_batchnorm(backbone_model)
    return n_frozen


def freeze_batchnorm(backbone_model) -> int:
    """Keep every BatchNormalization layer of `backbone_model` in inference mode (in Keras 3, a non-trainable BN
    layer normalises with its moving statistics, even in training); returns how many there are (VGG: 0)."""
    import keras

    layers = [layer for layer in backbone_model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in layers:
        layer.trainable = False
    return len(layers)


LAYERS_FILE = Path(__file__).with_name("backbone_layers.json")  # `layer_inventory()` of every backbone, generated


def _first_with_weights(layers: list[dict]) -> str | None:
    return next((layer["name"] for layer in layers if layer["params"] or layer["weights"]), None)


def layer_inventory(input_size: int | None = None) -> dict[str, list[dict]]:
    """Per registered backbone, its layers in order: name, trainable parameters, whether it holds weights. Built
    with Keras (weights=None, a small input size: neither changes the layers or their parameter counts)."""
    import keras

    from sonotune.models.backbones import BACKBONES, create_backbone

    inventory = {}
    for name, spec in BACKBONES.items():
        model = create_backbone(name, input_size or max(spec.min_size, 75), weights=None)
        inventory[name] = [{"name": layer.name, "weights": bool(layer.weights),
                            "params": sum(int(np.prod(w.shape)) for w in layer.trainable_weights)}
                           for layer in model.layers]
        del model
        keras.backend.clear_session()
    return inventory


def write_layer_inventory(path: Path = LAYERS_FILE) -> Path:
    """Regenerate the shipped inventory (`python -c "from sonotune.models.strategies import *; write_layer_inventory()"`)."""
    path.write_text(json.dumps(layer_inventory(), indent=1) + "\n")
    return path


def strategy_table(input_size: int | None = None) -> str:
    """Text table: per registered backbone and strategy, frozen/trainable layer counts, the backbone's
    trainable parameters and the first trainable layer (with the first one holding weights, if different).

    Read from the shipped inventory (`LAYERS_FILE`: no TensorFlow, instant); built with Keras only for an
    explicit `input_size` (`layer_inventory`).
    """
    inventory = layer_inventory(input_size) if input_size else json.loads(LAYERS_FILE.read_text())
    lines = [f"{'backbone':<12} {'strategy':>8} {'frozen':>7} {'trainable':>9} {'train params':>12}  "
             "first trainable layer (first with weights)"]
    for name, layers in inventory.items():
        for strategy in STRATEGIES:
            n_frozen = frozen_layer_count(name, len(layers), strategy)
            first = layers[n_frozen]["name"] if n_frozen < len(layers) else "(none: head only)"
            with_weights = _first_with_weights(layers[n_frozen:])
            if with_weights and with_weights != first:
                first += f" ({with_weights})"
            n_params = sum(layer["params"] for layer in layers[n_frozen:]) / 1e6
            lines.append(f"{name:<12} {strategy:>7}% {n_frozen:>7} {len(layers) - n_frozen:>9} {n_params:>11.2f}M  "
                         f"{first}")
    return "\n".join(lines)
