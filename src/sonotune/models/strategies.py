"""Fine-tuning strategies: the fraction of a backbone's last layers left trainable, as frozen-layer counts.

The paper's Table 2 is shipped as data for its five backbones (no single rounding rule reproduces it);
any other backbone uses round(n × (1 − f)).
"""

from __future__ import annotations

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
    import keras

    n_frozen = frozen_layer_count(backbone, len(backbone_model.layers), strategy)
    for index, layer in enumerate(backbone_model.layers):
        layer.trainable = index >= n_frozen
        if freeze_bn and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return n_frozen


def _first_with_weights(layers) -> str | None:
    return next((layer.name for layer in layers if layer.weights), None)


def strategy_table(input_size: int | None = None) -> str:
    """Text table: per registered backbone and strategy, frozen/trainable layer counts, the backbone's
    trainable parameters and the first trainable layer (with the first one holding weights, if different).

    Built with weights=None at a small input size: layer lists and parameter counts do not depend on either.
    """
    import keras

    from sonotune.models.backbones import BACKBONES, create_backbone

    lines = [f"{'backbone':<12} {'strategy':>8} {'frozen':>7} {'trainable':>9} {'train params':>12}  "
             "first trainable layer (first with weights)"]
    for name, spec in BACKBONES.items():
        model = create_backbone(name, input_size or max(spec.min_size, 75), weights=None)
        layers = model.layers
        sizes = [sum(int(np.prod(w.shape)) for w in layer.trainable_weights) for layer in layers]
        for strategy in STRATEGIES:
            n_frozen = frozen_layer_count(name, len(layers), strategy)
            first = layers[n_frozen].name if n_frozen < len(layers) else "(none: head only)"
            with_weights = _first_with_weights(layers[n_frozen:])
            if with_weights and with_weights != first:
                first += f" ({with_weights})"
            n_params = sum(sizes[n_frozen:]) / 1e6
            lines.append(f"{name:<12} {strategy:>7}% {n_frozen:>7} {len(layers) - n_frozen:>9} {n_params:>11.2f}M  "
                         f"{first}")
        del model
        keras.backend.clear_session()
    return "\n".join(lines)
