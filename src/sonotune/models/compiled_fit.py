"""Keras `fit` on in-memory arrays with one compiled call per epoch: the same training, less overhead.

Generic Keras 3 code (TensorFlow backend), knowing nothing of the study. On a CPU `Model.fit` spends about
0.1 s per epoch outside the arithmetic: a tf.data iterator per epoch for training and one for validation,
metric resets and reads, the callbacks. For a small model trained on cached activations (the prefix cache's
suffix at 0 %: two Dense layers on the pooled features) that is most of a fold's time. `fit_arrays` runs the
same training:

- the same batches in the same order: each epoch's permutation is drawn by Keras' own `ArrayDataAdapter` over
  the sample indices, created where `fit` creates it, so the same random stream draws the same shuffles;
- the same steps: the model's own `train_step` / `test_step` (loss, class weights as sample weights, metrics,
  optimizer, Dropout's seed generator), the full batches of an epoch in one `tf.function` loop, the last,
  partial batch in a second call of the same function;
- the same validation (metrics reset, batches of `batch_size` in order, `val_` logs) and the same epoch logs;
- the callbacks' epoch hooks (`on_train_begin/end`, `on_epoch_begin/end`: EarlyStopping, progress bars, the
  returned History) and `stop_training`.

`applies(model, fit_kwargs)` says when it can stand in for `fit`: TensorFlow backend, only the keyword arguments
above, no callback with batch-level or validation hooks. The exactness tests (tests/models/test_prefix_cache.py) compare it
with the full model's `fit`, weights and history, to float rounding.
"""

from __future__ import annotations

import numpy as np

SUPPORTED_KWARGS = {"epochs", "batch_size", "shuffle", "verbose", "callbacks", "class_weight"}
# the hooks `fit` calls and `fit_arrays` does not: per batch, and around each validation
UNCALLED_HOOKS = ("on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin", "on_test_batch_end",
                  "on_test_begin", "on_test_end")


def _uses_uncalled_hooks(callback) -> bool:
    import keras

    return any(getattr(type(callback), hook) is not getattr(keras.callbacks.Callback, hook)
               for hook in UNCALLED_HOOKS)


def applies(model, fit_kwargs: dict) -> str | None:
    """None when `fit_arrays` can run this fit, else why not (the caller then uses `model.fit`)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return f"backend {keras.backend.backend()}"
    if set(fit_kwargs) - SUPPORTED_KWARGS:
        return f"fit arguments {sorted(set(fit_kwargs) - SUPPORTED_KWARGS)}"
    if fit_kwargs.get("verbose", "auto") != 0:
        return "a Keras progress bar (verbose != 0)"
    if any(_uses_uncalled_hooks(c) for c in fit_kwargs.get("callbacks") or []):
        return "a callback with batch-level or validation hooks"
    return None


def _loops(model, specs: tuple):
    """The model's compiled train and test loops for inputs of `specs` (kept on the model: a pooled, compiled
    model reuses them fold after fold). Each runs `train_step` / `test_step` over rows of a batch-index matrix."""
    import tensorflow as tf

    cache = model.__dict__.setdefault("_sonotune_compiled_fit", {})
    if specs in cache:
        return cache[specs]
    inputs_spec, y_spec, weight_spec = specs
    # XLA or not as the model's own fit would be (off on a CPU): XLA draws Dropout's masks with another algorithm
    jit = bool(model.jit_compile)
    batches_spec = tf.TensorSpec([None, None], tf.int64)

    def batch(inputs, y, weights, index):
        x = [tf.gather(a, index) for a in inputs]
        data = (x[0] if len(x) == 1 else x, tf.gather(y, index))
        return data if weights is None else (*data, tf.gather(weights, index))

    def over_rows(step):
        """`step` (train_step or test_step) on each row of `batches`, one tf.while_loop."""
        def run(inputs, y, weights, batches):
            for row in tf.range(tf.shape(batches)[0]):
                step(batch(inputs, y, weights, batches[row]))
            return tf.constant(0)
        return run

    def compiled(run, with_weights: bool):
        signature = [list(inputs_spec), y_spec, *([weight_spec] if with_weights else []), batches_spec]
        body = run if with_weights else (lambda inputs, y, batches: run(inputs, y, None, batches))
        return tf.function(body, input_signature=signature, jit_compile=jit)

    train = compiled(over_rows(model.train_step), weight_spec is not None)
    test = compiled(over_rows(model.test_step), False)
    cache[specs] = (train, test)
    return cache[specs]


def _batches(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """`order` as a (full batches × batch_size) matrix and, if any, a (1 × rest) one: one call each."""
    full = len(order) // batch_size * batch_size
    parts = [order[:full].reshape(-1, batch_size)] if full else []
    return parts + ([order[full:].reshape(1, -1)] if full < len(order) else [])


def fit_arrays(model, inputs: list[np.ndarray], y: np.ndarray, fit_index: np.ndarray, val_index: np.ndarray, *,
               epochs: int = 1, batch_size: int = 32, shuffle=True, callbacks=None, class_weight=None,
               verbose=0):
    """`model.fit(inputs[fit_index], y[fit_index], validation_data=(inputs[val_index], y[val_index]), ...)` with
    one compiled call per epoch (see the module docstring); returns the History. `inputs`: the model's input
    arrays, whole (rows are picked by index inside the compiled loop)."""
    import keras
    import tensorflow as tf
    from keras.src.trainers.data_adapters import array_data_adapter, data_adapter_utils

    del verbose  # 0: `applies` rejects anything else
    fit_index, val_index = np.asarray(fit_index, np.int64), np.asarray(val_index, np.int64)
    # drawn here, where fit draws its own: the same random stream gives the same permutations
    shuffles = array_data_adapter.ArrayDataAdapter(np.arange(len(fit_index)), batch_size=batch_size,
                                                   shuffle=shuffle).get_tf_dataset()
    weights = None
    if class_weight is not None:
        weights = np.ones(len(y), np.float32)
        weights[fit_index] = data_adapter_utils.class_weight_to_sample_weights(y[fit_index], class_weight)
    tensors = [tf.convert_to_tensor(a) for a in inputs]
    y_tensor = tf.convert_to_tensor(y)
    weight_tensor = None if weights is None else tf.convert_to_tensor(weights)
    specs = (tuple(tf.TensorSpec([None, *t.shape[1:]], t.dtype) for t in tensors),
             tf.TensorSpec([None, *y_tensor.shape[1:]], y_tensor.dtype),
             None if weights is None else tf.TensorSpec([None], tf.float32))
    train, test = _loops(model, specs)
    val_batches = _batches(val_index, batch_size)
    callback_list = keras.callbacks.CallbackList(callbacks, add_history=True, model=model, epochs=epochs,
                                                 steps=-(-len(fit_index) // batch_size))
    model.stop_training = False
    callback_list.on_train_begin()
    epoch_logs = None
    for epoch in range(epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        order = np.concatenate([np.asarray(keras.tree.flatten(b)[0]) for b in shuffles])
        for rows in _batches(fit_index[order], batch_size):
            train(tensors, y_tensor, *([] if weights is None else [weight_tensor]), tf.constant(rows))
        epoch_logs = dict(model.get_metrics_result())
        if len(val_index):
            model.reset_metrics()
            for rows in val_batches:
                test(tensors, y_tensor, tf.constant(rows))
            epoch_logs |= {f"val_{name}": value for name, value in model.get_metrics_result().items()}
        callback_list.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    if epochs > 0:
        model.optimizer.finalize_variable_values(model.trainable_weights)
    callback_list.on_train_end(logs=epoch_logs)
    return model.history
