"""`compiled_fit.fit_arrays` trains exactly like Keras' `fit` on the same arrays (weights, history, callbacks).

Small Dense models on random arrays, trained twice from the same seed: once by `Model.fit` on the fit and
validation rows, once by `fit_arrays` on the whole arrays with their indices. A partial last batch, class
weights, Dropout and EarlyStopping's best-epoch restore are all in play.
"""

import keras
import numpy as np
import pytest

from sonotune.models import compiled_fit

EPOCHS = 4


def _model(inputs: int = 2):
    keras.utils.set_random_seed(3)
    features = [keras.Input((6,)) for _ in range(inputs)]
    joined = keras.layers.Concatenate()(features) if inputs > 1 else features[0]
    hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(8, activation="relu")(joined))
    model = keras.Model(features, keras.layers.Dense(2, activation="softmax")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc", multi_label=True, num_labels=2)])
    return model


def _data(inputs: int):
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=(40, 6)).astype(np.float32) for _ in range(inputs)]
    y = keras.utils.to_categorical((arrays[0][:, 0] + rng.normal(size=40) > 0.3).astype(int), 2)
    order = rng.permutation(40)
    return arrays, y, order[:26], order[26:]  # 26 fit rows: six batches of 4 and one of 2


def _early_stopping():
    return keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=EPOCHS, restore_best_weights=True)


def _pick(arrays, index):
    return [a[index] for a in arrays] if len(arrays) > 1 else arrays[0][index]


@pytest.mark.parametrize(("inputs", "class_weight"), [(1, None), (2, {0: 0.7, 1: 1.9})])
def test_fit_arrays_trains_like_keras_fit(inputs, class_weight):
    arrays, y, fit, val = _data(inputs)
    kwargs = dict(epochs=EPOCHS, batch_size=4, shuffle=True, verbose=0, class_weight=class_weight)
    keras_model, stop_a = _model(inputs), _early_stopping()
    history = keras_model.fit(_pick(arrays, fit), y[fit], validation_data=(_pick(arrays, val), y[val]),
                              callbacks=[stop_a], **kwargs).history
    ours, stop_b = _model(inputs), _early_stopping()
    assert compiled_fit.applies(ours, kwargs | {"callbacks": [stop_b]}) is None
    compiled = compiled_fit.fit_arrays(ours, arrays, y, fit, val, callbacks=[stop_b], **kwargs).history
    assert set(compiled) == set(history) == {"loss", "auc", "val_loss", "val_auc"}
    for key in history:
        np.testing.assert_allclose(compiled[key], history[key], rtol=1e-6)
    assert stop_b.best_epoch == stop_a.best_epoch
    for a, b in zip(keras_model.get_weights(), ours.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)


def test_a_second_fit_reuses_the_compiled_loops_and_draws_the_shuffles_fit_would():
    arrays, y, fit, val = _data(1)
    model = _model(1)
    kwargs = dict(epochs=2, batch_size=4, shuffle=True, verbose=0)
    compiled_fit.fit_arrays(model, arrays, y, fit, val, **kwargs)
    loops = dict(model._sonotune_compiled_fit)
    reference, again = _model(1), _model(1)
    reference.fit(arrays[0][fit], y[fit], validation_data=(arrays[0][val], y[val]), **kwargs)
    reference.fit(arrays[0][fit], y[fit], validation_data=(arrays[0][val], y[val]), **kwargs)
    compiled_fit.fit_arrays(again, arrays, y, fit, val, **kwargs)
    compiled_fit.fit_arrays(again, arrays, y, fit, val, **kwargs)
    for a, b in zip(reference.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    compiled_fit.fit_arrays(model, arrays, y, fit, val, **kwargs)
    assert model._sonotune_compiled_fit == loops  # same input specs: no new tf.function


def test_it_declines_what_it_does_not_reproduce():
    model = _model(1)

    class PerBatch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    assert compiled_fit.applies(model, {"epochs": 1, "verbose": 0}) is None
    assert "batch-level" in compiled_fit.applies(model, {"verbose": 0, "callbacks": [PerBatch()]})
    assert "progress bar" in compiled_fit.applies(model, {"verbose": 1})
    assert "validation_split" in compiled_fit.applies(model, {"verbose": 0, "validation_split": 0.2})
