"""Every fold of one configuration trained at once: K Keras models as one batch under `jax.vmap` (JAX only).

`iter_train_folds_batched` keeps `training.iter_train_folds`' batch contract and, fold for fold, the math of
`training.train_fold` under the JAX backend:
- Each fold's model is built as `train_fold` builds it (`build_fold_model` under its `fold_seed`:
  the backbone, then the head under `head_seed(fold_seed)`), so its initial weights and Dropout seed state are the sequential path's.
- The trained part is the whole model, or with a `PrefixCache` the suffix after the frozen prefix, over the
  cached activations (one array when every fold's frozen weights are equal, e.g. ImageNet weights; one per
  fold otherwise, e.g. random initialisation). Its trainable, non-trainable (BatchNorm statistics, Dropout seed
  state) and optimizer variables are stacked on a leading axis of length K, and one `jax.jit`-compiled step,
  `jax.vmap` of `stateless_call` + `optimizer.stateless_apply`, updates every model on its own mini-batch.
- Batch order: Keras' `fit(shuffle=True)` on arrays draws `np.random.permutation(n_fit)` per epoch from the
  global NumPy state that `set_random_seed(head_seed(fold_seed))` seeded; here each fold draws the same
  permutations from its own `RandomState(head_seed(fold_seed))`. Folds differ in training-set size, so a step updates the models whose batch
  has the step's size and leaves the others untouched (`active`); a last, partial batch is a separate call of
  its own size (no padding: BatchNorm in training mode sees exactly the batch that `fit` would give it).
- Loss: the compiled categorical cross-entropy with the fold's class weights as sample weights
  ("sum_over_batch_size", as `fit` does); history `loss` is the batch-size-weighted mean of batch losses, the
  metrics (the compiled AUC) are Keras' own metric objects fed the step's predictions (and sample weights);
  validation runs every model on its own validation set (`training=False`). The best epoch by
  `finetune.monitor` is chosen per model as `EarlyStopping(patience=epochs, restore_best_weights=True)`
  chooses it, and its weights are restored.
So each model's weights equal its sequential `train_fold` under JAX up to float rounding (tests/models/
test_batched.py; docs/batched_training.md). Afterwards the values are written back into each fold's own Keras
model, which `predict_outputs` uses as before. A batch that cannot be stacked (folds of different structure, a
loss other than the compiled categorical cross-entropy) is trained sequentially, logged.
"""

from __future__ import annotations

import gc
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from sonotune.config import Finetune
from sonotune.cv import Fold
from sonotune.models.prefix_cache import ActivationStore, build_suffix, prefix_key, split_model, structure_signature

log = logging.getLogger(__name__)

LOSS = "categorical_crossentropy"  # what head.build_classifier compiles; anything else goes sequential
PREDICT_BATCH = 64  # validation images per model and call


@dataclass(frozen=True)
class Kit:
    """The sequential trainer's primitives (models/training.py passes its own, so the two paths cannot drift
    apart and this module does not import training, which imports it)."""

    build_fold_model: Callable  # (cfg, backbone, strategy, seed, pool) -> compiled classifier
    train_fold: Callable  # the sequential fallback: (cfg, seed, backbone, strategy, x, y, fold, cache) -> TrainedFold
    fold_seed: Callable  # (seed, fold) -> int
    head_seed: Callable  # fold seed -> the seed of its head and shuffles
    class_weights: Callable  # (policy, y_fit) -> {class: weight} | None
    trained_fold: Callable  # TrainedFold(model, history, best_epoch, monitored)
    better: Callable  # (monitor, a, b) -> bool


@dataclass
class Member:
    """One fold of the batch: its Keras model, the part that trains, and that part's inputs."""

    fold: Fold
    model: object  # the fold's full classifier (what is yielded)
    trainer: object  # the model itself, or its suffix after the cached frozen prefix (same layer objects)
    key: str | None  # prefix-cache key of its frozen part (None without the cache)
    store: ActivationStore | None = None  # holds its activations (the caller's cache.store, or its own)
    split: object = None  # prefix_cache.PrefixSplit of the model (None without the cache)


def is_available() -> bool:
    import keras

    return keras.backend.backend() == "jax"


def initial_model(kit: Kit, cfg: Finetune, seed: int, backbone: str, strategy: int, fold: Fold):
    """The fold's model before training, built exactly as `training.train_fold` builds it."""
    import keras

    return kit.build_fold_model(cfg, backbone, strategy, kit.fold_seed(seed, fold), None)


FIT_PEEKS = 1  # permutations Keras' JAX `fit` draws before its first epoch (`_symbolic_build` peeks one batch)


def epoch_permutations(seed: int, n_fit: int, epochs: int) -> list[np.ndarray]:
    """The batch order of a fresh model's `fit(shuffle=True)` after `set_random_seed(seed)` (Keras 3, JAX):
    one `np.random.permutation` per epoch, after the one its symbolic build draws to peek at a batch."""
    state = np.random.RandomState(seed)
    permutations = [state.permutation(n_fit) for _ in range(FIT_PEEKS + epochs)]
    return permutations[FIT_PEEKS:]


def epoch_steps(orders: list[np.ndarray], batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One epoch's calls of the batched step: (index (K, b), active (K,)) per call.

    `orders[k]` are model k's image indices in its batch order. Step s takes model k's s-th batch; models
    whose s-th batch has another size (a last, partial batch) or no s-th batch sit that call out."""
    n_steps = max(-(-len(order) // batch_size) for order in orders)
    calls = []
    for step in range(n_steps):
        batches = [order[step * batch_size:(step + 1) * batch_size] for order in orders]
        for size in sorted({len(b) for b in batches if len(b)}, reverse=True):
            active = np.array([len(b) == size for b in batches])
            index = np.stack([b if len(b) == size else np.zeros(size, np.int64) for b in batches])
            calls.append((index.astype(np.int32), active))
    return calls


def _stack(values_per_model: list[list]) -> list:
    import jax.numpy as jnp

    return [jnp.stack([np.asarray(values[i]) for values in values_per_model]) for i in range(len(values_per_model[0]))]


def _values(variables) -> list[np.ndarray]:
    import keras

    return [keras.ops.convert_to_numpy(v.value) for v in variables]


def _call_inputs(batch: list):
    return batch[0] if len(batch) == 1 else batch


def make_train_step(trainer, optimizer, loss_fn, shared_inputs: bool):
    """jit(vmap(one model's train step)): stacked (trainable, non-trainable, optimizer) values, inputs (shared
    or stacked), one-hot labels (shared), sample weights (K, n), index (K, b), active (K,) → new values,
    batch losses (K,), predictions (K, b, 2). Inactive models keep their values."""
    import jax
    import jax.numpy as jnp

    def one(trainable, non_trainable, optimizer_values, inputs, y, weights, index, active):
        batch = [a[index] for a in inputs]

        def objective(trainable):
            y_pred, updated = trainer.stateless_call(trainable, non_trainable, _call_inputs(batch), training=True)
            return loss_fn(y[index], y_pred, sample_weight=weights[index]), (y_pred, updated)

        (loss, (y_pred, updated)), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        new_trainable, new_optimizer = optimizer.stateless_apply(optimizer_values, grads, trainable)

        def keep(new, old):
            return jax.tree.map(lambda n, o: jnp.where(active, n, o), new, old)

        return (keep(new_trainable, trainable), keep(updated, non_trainable), keep(new_optimizer, optimizer_values),
                loss, y_pred)

    axes = (0, 0, 0, None if shared_inputs else 0, None, 0, 0, 0)
    return jax.jit(jax.vmap(one, in_axes=axes), donate_argnums=(0, 1, 2))


def make_predict_step(trainer, shared_inputs: bool):
    """jit(vmap(inference)): stacked values, inputs, index (K, b) → predictions (K, b, 2)."""
    import jax

    def one(trainable, non_trainable, inputs, index):
        batch = [a[index] for a in inputs]
        y_pred, _ = trainer.stateless_call(trainable, non_trainable, _call_inputs(batch), training=False)
        return y_pred

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None if shared_inputs else 0, 0)))


def make_select():
    """jit: per model k, `new` where mask[k] else `old` (the best epoch's values)."""
    import jax
    import jax.numpy as jnp

    def select(mask, new, old):
        return jax.tree.map(lambda n, o: jnp.where(mask.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old)

    return jax.jit(select)


def predict_all(predict_step, state: list, inputs: list, index_sets: list[np.ndarray]) -> list[np.ndarray]:
    """Every model's predictions on its own index set (e.g. its validation fold), in chunks of PREDICT_BATCH;
    shorter sets are padded with their first index (inference is per image) and the padding dropped."""
    import jax.numpy as jnp

    longest = max(len(s) for s in index_sets)
    padded = np.stack([np.concatenate([s, np.full(longest - len(s), s[0])]) for s in index_sets]).astype(np.int32)
    chunks = [np.asarray(predict_step(state[0], state[1], inputs, jnp.asarray(padded[:, start:start + PREDICT_BATCH])))
              for start in range(0, longest, PREDICT_BATCH)]
    predictions = np.concatenate(chunks, axis=1)
    return [predictions[k, :len(s)] for k, s in enumerate(index_sets)]


STEPS: OrderedDict[tuple, tuple] = OrderedDict()  # compiled steps per trained-part structure (2 kept)


def compiled_steps(trainer, compile_config: dict, optimizer, loss_fn, shared_inputs: bool) -> tuple:
    """(train step, predict step, select), reused by later batches of the same structure: the steps read only
    the values passed in, so a step traced on one batch's models serves another's (jit re-traces on new shapes)."""
    key = (structure_signature(trainer, compile_config), shared_inputs)
    if key not in STEPS:
        STEPS[key] = (make_train_step(trainer, optimizer, loss_fn, shared_inputs),
                      make_predict_step(trainer, shared_inputs), make_select())
        while len(STEPS) > 2:
            STEPS.popitem(last=False)
    STEPS.move_to_end(key)
    return STEPS[key]


def metric_value(metric, y_true: np.ndarray, y_pred: np.ndarray, weights: np.ndarray | None) -> float:
    metric.reset_state()
    metric.update_state(y_true, y_pred, sample_weight=weights)
    return float(metric.result())


def _stackable(members: list[Member]) -> str | None:
    """Why the members' trained parts cannot be stacked (None when they can)."""
    first = members[0].trainer
    if not first.trainable_variables:
        return "nothing to train"
    for member in members[1:]:
        for a, b in ((first.trainable_variables, member.trainer.trainable_variables),
                     (first.non_trainable_variables, member.trainer.non_trainable_variables)):
            if [(tuple(v.shape), v.dtype) for v in a] != [(tuple(v.shape), v.dtype) for v in b]:
                return "folds of different structure"
    if members[0].model.get_compile_config().get("loss") != LOSS:
        return f"loss is not {LOSS}"
    return None


def prepare_members(kit: Kit, cfg: Finetune, seed: int, backbone: str, strategy: int, x: np.ndarray,
                    folds: Sequence[Fold], cache) -> tuple[list[Member], list[np.ndarray] | None]:
    """Each fold's model and trained part; with the cache, its activations: (members, shared arrays or None)."""
    members = []
    for fold in folds:
        model = initial_model(kit, cfg, seed, backbone, strategy, fold)
        split, reason = split_model(model) if cache is not None else (None, None)
        if cache is not None and split is None:
            log.warning("prefix cache: training the full models (%s)", reason)
            cache = None
        if split is None:
            members.append(Member(fold, model, model, None))
            continue
        members.append(Member(fold, model, build_suffix(split.cut, model.outputs), prefix_key(split, x), split=split))
    if cache is None:
        for member in members:  # one fold without a useful cut: every fold trains its full model
            member.trainer, member.key, member.split = member.model, None, None
        return members, None
    shared = len({m.key for m in members}) == 1
    stores: dict[str, ActivationStore] = {}
    for member in members:
        if member.key not in stores:
            store = cache.store if not stores else ActivationStore(cache.store.ram_budget_bytes,
                                                                   cache.store.spill_dir)
            store.get(member.split, x)
            stores[member.key] = store
        member.store = stores[member.key]
    return members, (cache.store.arrays if shared else None)


def hand_over(source: ActivationStore, target: ActivationStore) -> None:
    """Make `target` (the caller's cache) hold `source`'s activations, so `predict_outputs` finds them."""
    if source is target or source.key == target.key:
        return
    target.clear()
    target.key, target.arrays, target._folder = source.key, source.arrays, source._folder
    source._folder = None


def iter_train_folds_batched(kit: Kit, cfg: Finetune, seed: int, backbone: str, strategy: int, x: np.ndarray,
                             y: np.ndarray, folds: Sequence[Fold], cache=None) -> Iterator:
    """`training.iter_train_folds` (same contract, `cache` a training.PrefixCache or None) with every fold
    trained at once; yields its TrainedFolds after the batch."""
    import keras

    if not folds:
        return
    members, shared = prepare_members(kit, cfg, seed, backbone, strategy, x, folds, cache)
    reason = _stackable(members)
    if reason:
        log.warning("parallel_folds: training %d folds sequentially (%s)", len(folds), reason)
        del members
        for fold in folds:
            yield kit.train_fold(cfg, seed, backbone, strategy, x, y, fold, cache)
            keras.backend.clear_session()
            gc.collect()
        return
    results = train_members(kit, cfg, seed, members, x, y, shared)
    del shared
    while results:
        member, trained = members.pop(0), results.pop(0)
        if cache is not None and member.store is not None:
            hand_over(member.store, cache.store)
        del member
        yield trained
        del trained
    keras.backend.clear_session()
    gc.collect()


def _inputs(members: list[Member], x: np.ndarray, shared: list[np.ndarray] | None):
    """The trained parts' inputs on the device, and whether every model shares them."""
    import jax.numpy as jnp

    if members[0].store is None:
        return [jnp.asarray(x)], True
    if shared is not None:
        return [jnp.asarray(a) for a in shared], True
    n_arrays = len(members[0].store.arrays)
    return [jnp.stack([np.asarray(m.store.arrays[i]) for m in members]) for i in range(n_arrays)], False


def train_members(kit: Kit, cfg: Finetune, seed: int, members: list[Member], x: np.ndarray, y: np.ndarray,
                  shared: list[np.ndarray] | None) -> list:
    """Train every member at once for `cfg.epochs`; restore each one's best epoch; its TrainedFold."""
    import jax.numpy as jnp
    import keras

    template = members[0].model
    compiled = keras.saving.deserialize_keras_object(template.get_compile_config())
    optimizer, metrics = compiled["optimizer"], compiled.get("metrics") or []
    trainer = members[0].trainer
    optimizer.build(trainer.trainable_variables)
    loss_fn = keras.losses.CategoricalCrossentropy()
    inputs, shared_inputs = _inputs(members, x, shared)
    onehot = keras.utils.to_categorical(y, 2).astype("float32")
    weights = np.ones((len(members), len(y)), np.float32)
    for k, member in enumerate(members):
        policy = kit.class_weights(cfg.class_weight, y[member.fold.fit])
        if policy is not None:
            weights[k] = np.array([policy[int(label)] for label in y], np.float32)

    state = [_stack([_values(m.trainer.trainable_variables) for m in members]),
             _stack([_values(m.trainer.non_trainable_variables) for m in members]),
             _stack([_values(optimizer.variables)] * len(members))]
    train_step, predict_step, select = compiled_steps(trainer, template.get_compile_config(), optimizer, loss_fn,
                                                      shared_inputs)
    y_device, w_device = jnp.asarray(onehot), jnp.asarray(weights)

    permutations = [epoch_permutations(kit.head_seed(kit.fold_seed(seed, m.fold)), len(m.fold.fit), cfg.epochs) for m in members]
    monitor = cfg.monitor
    K = len(members)
    history = [dict() for _ in members]
    best_value = np.full(K, np.inf if monitor == "val_loss" else -np.inf)
    best_epoch = np.zeros(K, int)
    best_state = None
    bar = tqdm(total=cfg.epochs, desc=f"{len(members)} folds at once", unit="epoch", leave=False)
    for epoch in range(cfg.epochs):
        orders = [m.fold.fit[permutations[k][epoch]] for k, m in enumerate(members)]
        losses, sizes, predictions, batches = [[] for _ in members], [[] for _ in members], [[] for _ in members], []
        for index, active in epoch_steps(orders, cfg.batch_size):
            *state, loss, y_pred = train_step(*state, inputs, y_device, w_device, jnp.asarray(index),
                                               jnp.asarray(active))
            batches.append((index, active, loss, y_pred))
        for index, active, loss, y_pred in batches:
            loss, y_pred = np.asarray(loss), np.asarray(y_pred)
            for k in np.flatnonzero(active):
                losses[k].append(float(loss[k]) * index.shape[1])
                sizes[k].append(index.shape[1])
                predictions[k].append((index[k], y_pred[k]))
        validation = predict_all(predict_step, state, inputs, [m.fold.val for m in members])
        for k, member in enumerate(members):
            seen = np.concatenate([i for i, _ in predictions[k]])
            logs = {"loss": float(np.float32(np.sum(losses[k]) / np.sum(sizes[k])))}
            for metric in metrics:
                logs[metric.name] = metric_value(metric, onehot[seen], np.concatenate([p for _, p in predictions[k]]),
                                                 weights[k][seen])
            val_true, val_pred = onehot[member.fold.val], validation[k]
            logs["val_loss"] = float(np.mean(np.asarray(loss_fn.call(val_true, val_pred))))
            for metric in metrics:
                logs[f"val_{metric.name}"] = metric_value(metric, val_true, val_pred, None)
            for name, value in logs.items():
                history[k].setdefault(name, []).append(value)
        current = np.array([history[k][monitor][-1] for k in range(K)])
        improved = np.array([epoch == 0 or kit.better(monitor, current[k], best_value[k]) for k in range(K)])
        # EarlyStopping: the first epoch's weights are kept even when its value is no improvement (NaN)
        reached = np.array([kit.better(monitor, current[k], best_value[k]) for k in range(K)])
        best_value = np.where(reached, current, best_value)
        best_epoch = np.where(improved, epoch, best_epoch)
        mask = jnp.asarray(improved)
        snapshot = (state[0], state[1])
        best_state = select(mask, snapshot, snapshot if best_state is None else best_state)
        bar.update()
    bar.close()
    results = []
    for k, member in enumerate(members):
        for variables, values in zip((member.trainer.trainable_variables, member.trainer.non_trainable_variables),
                                     best_state, strict=True):
            for variable, value in zip(variables, values, strict=True):
                variable.assign(np.asarray(value[k]))
        results.append(kit.trained_fold(member.model, dict(sorted(history[k].items())), int(best_epoch[k]),
                                   float(best_value[k])))
    return results
