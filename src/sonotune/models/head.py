"""The paper's classifier: backbone → GlobalMaxPooling2D → Dense(512, relu) → Dropout(0.5) → Dense(2, softmax).

`build_classifier` returns the compiled model; `feature_model` exposes the pooled and dense activations
that the FT-SVM stage classifies; `inference_copy` is the model without its optimizer state, the form that is
saved and logged (a `.keras` file always carries the optimizer's variables, ×3 the trainable weights with Adam).
"""

from __future__ import annotations

from dataclasses import dataclass

POOLED_LAYER = "pooled"
DENSE_LAYER = "dense_features"


@dataclass(frozen=True)
class HeadConfig:
    dense_units: int = 512
    dropout: float = 0.5
    learning_rate: float = 1e-4


def build_classifier(backbone_model, head: HeadConfig):
    import keras

    x = keras.layers.GlobalMaxPooling2D(name=POOLED_LAYER)(backbone_model.output)
    x = keras.layers.Dense(head.dense_units, activation="relu", name=DENSE_LAYER)(x)
    x = keras.layers.Dropout(head.dropout)(x)
    # float32 whatever the dtype policy (finetune.precision): a bf16 softmax would round the scores into ties
    outputs = keras.layers.Dense(2, activation="softmax", name="probabilities", dtype="float32")(x)
    model = keras.Model(backbone_model.input, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(head.learning_rate),
        loss="categorical_crossentropy",
        # multi_label: the AUC of each one-hot column (both equal the malignant-vs-benign AUC); the default
        # flattens both columns into one, which rewards the class prior and is not the ROC AUC
        metrics=[keras.metrics.AUC(name="auc", multi_label=True, num_labels=2)],
    )
    return model


def feature_model(classifier):
    """A model mapping images to the classifier's 'pooled' and 'dense' activations and its 'probabilities'."""
    import keras

    return keras.Model(
        classifier.input,
        {
            "pooled": classifier.get_layer(POOLED_LAYER).output,
            "dense": classifier.get_layer(DENSE_LAYER).output,
            "probabilities": classifier.output,
        },
    )


def inference_copy(classifier):
    """`classifier`'s graph as a new, uncompiled Model sharing its layers and weights: what is saved and
    logged (no optimizer state; `keras.models.clone_model` would recompile it)."""
    import keras

    return keras.Model(classifier.inputs, classifier.outputs, name=classifier.name)
