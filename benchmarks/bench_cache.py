"""Benchmark of the exact frozen-prefix cache: the same k-fold study, paper-style full-model fit vs cached.

Run `make bench` (ResNet50, 224 px, 128 images, 10 epochs, 5 folds, then a 20-configuration RSS sweep: about
35 min on 2 cores; `BENCH_ARGS="--images 40 --epochs 4 --sweep-repeats 1"` for a quick look); on a GPU
`benchmarks/gpu_bench.sh`.
Needs only numpy + keras (+ the sonotune package on PYTHONPATH), so it runs under KERAS_BACKEND=jax too.

Per (backbone, strategy) the study is: per fold, seed, build backbone + the paper's head (frozen weights from
one file, as ImageNet weights would be, so the frozen part is the same in every fold), fit with the
EarlyStopping epoch selector, then predict probabilities + pooled/dense features of every image. "naive" is
the paper's full-model fit and predict; "cached" is `fit_with_prefix_cache` + `predict_with_prefix_cache`
(prefix computed once per study and shared by the folds). Prints the ratio table, where the cached time
goes (ResNet-style profile of the first cached configuration), the steps_per_execution / XLA / extraction
batch options, and a sweep of cached configurations with peak and resident RSS (a leak shows as growth).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import keras  # noqa: E402

from sonotune.models import prefix_cache as pc  # noqa: E402
from sonotune.models.backbones import create_backbone, get_spec  # noqa: E402
from sonotune.models.head import HeadConfig, build_classifier, feature_model  # noqa: E402
from sonotune.models.strategies import apply_strategy  # noqa: E402

# ------------------------------------------------------------------------------------------ memory


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRss:
    """Peak resident memory while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.peak, self._stop = rss_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())


# ------------------------------------------------------------------------------------------ data and folds


def make_images(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n phantom B-mode images (random speckle when the phantom's PIL/scipy are absent) and labels."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)  # about the BUSI ratio
    try:
        from sonotune.data.phantom import simulate_bmode

        grey = np.stack([simulate_bmode(rng, size, bool(label)) for label in y]).astype(np.float32)
    except ImportError:
        grey = rng.gamma(2.0, 40.0, size=(n, size, size)).clip(0, 255).astype(np.float32)
    return np.repeat(grey[..., None], 3, axis=-1), y


def make_folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Stratified (fit, val, test) index triples; val = every 5th training index (numpy only)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), int)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        fold_of[members] = np.arange(len(members)) % k
    folds = []
    for f in range(k):
        train, test = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        is_val = np.arange(len(train)) % 5 == 4
        folds.append((train[~is_val], train[is_val], test))
    return folds


# ------------------------------------------------------------------------------------------ the study


class Study:
    def __init__(self, args, backbone: str, x: np.ndarray, y: np.ndarray, weights_dir: str):
        self.args, self.backbone, self.x, self.y = args, backbone, x, y
        self.onehot = keras.utils.to_categorical(y, 2)
        self.folds = make_folds(y, args.folds, args.seed)
        self.weights = os.path.join(weights_dir, f"{backbone}_{x.shape[1]}.weights.h5")
        if not os.path.exists(self.weights):  # one fixed set of frozen weights, as ImageNet's would be
            keras.utils.set_random_seed(args.seed)
            create_backbone(backbone, x.shape[1], None).save_weights(self.weights)
            keras.backend.clear_session()

    def build(self, strategy: int, fold: int):
        keras.utils.set_random_seed(self.args.seed + fold)
        base = create_backbone(self.backbone, self.x.shape[1], None)
        base.load_weights(self.weights)
        apply_strategy(base, self.backbone, strategy)
        return build_classifier(base, HeadConfig(learning_rate=self.args.lr))

    def fit_kwargs(self):
        best = keras.callbacks.EarlyStopping(monitor="val_auc", mode="max", patience=self.args.epochs,
                                             restore_best_weights=True)
        return dict(epochs=self.args.epochs, batch_size=self.args.batch, shuffle=True, verbose=0, callbacks=[best])

    def run(self, strategy: int, cached: bool, store=None, compile_overrides=None, suffixes=None) -> dict:
        """Time the whole k-fold study; returns seconds per phase (build, prefix, fit, predict, total)."""
        suffixes = pc.SuffixPool() if suffixes is None else suffixes  # one compiled suffix shared by the folds
        times = {"build": 0.0, "fit": 0.0, "predict": 0.0, "prefix": 0.0}
        for index, (fit, val, _test) in enumerate(self.folds):
            start = time.perf_counter()
            model = self.build(strategy, index)
            times["build"] += time.perf_counter() - start
            start = time.perf_counter()
            if cached:
                misses = store.misses
                pc.fit_with_prefix_cache(model, self.x, self.onehot, fit, val, store=store,
                                                   compile_overrides=compile_overrides, suffixes=suffixes,
                                                   **self.fit_kwargs())
                if store.misses > misses:
                    times["prefix"] += store.last_extract_s
            else:
                model.fit(self.x[fit], self.onehot[fit], validation_data=(self.x[val], self.onehot[val]),
                                    **self.fit_kwargs())
            times["fit"] += time.perf_counter() - start
            start = time.perf_counter()
            if cached:
                pc.predict_with_prefix_cache(feature_model(model), self.x, self.args.predict_batch, store=store,
                                             suffixes=suffixes)
            else:
                feature_model(model).predict(self.x, batch_size=self.args.predict_batch, verbose=0)
            times["predict"] += time.perf_counter() - start
            del model
            keras.backend.clear_session()
            gc.collect()
        times["fit"] -= times["prefix"]
        times["total"] = times["build"] + times["fit"] + times["predict"] + times["prefix"]
        return times


# ------------------------------------------------------------------------------------------ profile


def profile_suffix(study: Study, strategy: int, store) -> list[tuple[str, float]]:
    """Where a cached training step goes: forward, forward+backward+SGD, +Adam, and the per-step overhead."""
    fit, val, _ = study.folds[0]
    b, epochs = study.args.batch, 3
    rows = []

    def timed_fit(optimizer=None, **overrides):
        model = study.build(strategy, 0)
        split, _ = pc.split_model(model)
        arrays = store.get(split, study.x)
        if optimizer is not None:
            overrides["optimizer"] = keras.saving.serialize_keras_object(optimizer)
        # a fresh pool: a newly compiled suffix, as the first fold of a study gets
        suffix = pc.SuffixPool().borrow(pc.build_suffix(split.cut, model.outputs),
                                        model.get_compile_config() | overrides)
        inputs = pc._inputs(arrays, fit)
        start = time.perf_counter()
        suffix.fit(inputs, study.onehot[fit], epochs=1, batch_size=b, verbose=0)  # trace + warm up
        first_epoch = time.perf_counter() - start
        start = time.perf_counter()
        suffix.fit(inputs, study.onehot[fit], epochs=epochs, batch_size=b, verbose=0, shuffle=True)
        per_step = (time.perf_counter() - start) / (epochs * -(-len(fit) // b))
        trace = first_epoch - per_step * -(-len(fit) // b)
        suffix.predict(inputs, batch_size=b, verbose=0)
        start = time.perf_counter()
        for _ in range(epochs):
            suffix.predict(inputs, batch_size=b, verbose=0)
        forward = (time.perf_counter() - start) / (epochs * -(-len(fit) // b))
        n_params = sum(int(np.prod(w.shape)) for w in suffix.trainable_weights)
        keras.backend.clear_session()
        gc.collect()
        return per_step, forward, n_params, trace

    adam, forward, n_params, trace = timed_fit()
    sgd, _, _, _ = timed_fit(optimizer=keras.optimizers.SGD(1e-4))
    spe, _, _, _ = timed_fit(steps_per_execution=16)
    rows.append(("trainable parameters (suffix + head)", n_params))
    rows.append(("trace/compile of a new suffix's train step (SuffixPool saves it on later folds), s", trace))
    rows.append(("forward only (predict step), ms", forward * 1e3))
    rows.append(("train step, SGD, ms", sgd * 1e3))
    rows.append(("train step, Adam (fit default), ms", adam * 1e3))
    rows.append(("  -> backward + SGD ≈ SGD step − forward, ms", (sgd - forward) * 1e3))
    rows.append(("  -> Adam over SGD (moments on the trainable weights), ms", (adam - sgd) * 1e3))
    rows.append(("train step, Adam, steps_per_execution=16, ms", spe * 1e3))
    rows.append(("  -> per-step Python/dispatch overhead ≈ default − spe16, ms", (adam - spe) * 1e3))
    try:
        xla, _, _, _ = timed_fit(jit_compile=True)
        rows.append(("train step, Adam, jit_compile=True (XLA), ms", xla * 1e3))
    except Exception as error:  # noqa: BLE001 - report, do not abort the benchmark
        rows.append((f"jit_compile=True failed: {type(error).__name__}", float("nan")))
    return rows


def extraction_batches(study: Study, strategy: int, batches=(4, 32, 64)) -> list[tuple[str, float]]:
    """Prefix extraction throughput (img/s) by batch size."""
    rows = []
    model = study.build(strategy, 0)
    split, _ = pc.split_model(model)
    for batch in batches:
        store = pc.ActivationStore()
        store.get(split, study.x[:batch], batch_size=batch)  # trace this batch shape
        store.clear()
        start = time.perf_counter()
        store.get(split, study.x, batch_size=batch)
        rows.append((f"prefix extraction, batch {batch}, img/s", len(study.x) / (time.perf_counter() - start)))
        store.clear()
    keras.backend.clear_session()
    gc.collect()
    return rows


# ------------------------------------------------------------------------------------------ main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet50"])
    parser.add_argument("--strategies", nargs="+", type=int, default=[15, 0])
    parser.add_argument("--size", type=int, default=224, help="input px of the headline study")
    parser.add_argument("--images", type=int, default=128, help="images in the headline study")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="training batch (the paper: 4)")
    parser.add_argument("--predict-batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-profile", action="store_true", help="skip the where-the-time-goes profile")
    parser.add_argument("--sweep-backbones", nargs="*",
                        default=["vgg16", "vgg19", "resnet50", "resnet101", "inceptionv3"])
    parser.add_argument("--sweep-strategies", nargs="*", type=int, default=[0, 15])
    parser.add_argument("--sweep-size", type=int, default=75)
    parser.add_argument("--sweep-images", type=int, default=24)
    parser.add_argument("--sweep-repeats", type=int, default=2, help="2: compare each configuration with itself")
    parser.add_argument("--dtype-policy", default="float32",
                        help="e.g. mixed_bfloat16: both paths in that policy (changes the math; not the default)")
    return parser.parse_args(argv)


def table(rows, header) -> str:
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    lines += [" | ".join(str(c) for c in row) for row in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    keras.config.set_dtype_policy(args.dtype_policy)
    print(f"dtype_policy={args.dtype_policy} backend={keras.backend.backend()} keras={keras.__version__} cpus={os.cpu_count()} "
          f"images={args.images} size={args.size} folds={args.folds} epochs={args.epochs} batch={args.batch}",
          flush=True)
    weights_dir = tempfile.mkdtemp(prefix="bench-weights-")
    x, y = make_images(args.images, args.size, args.seed)
    rows, profile_rows = [], []
    for backbone in args.backbones:
        study = Study(args, backbone, get_spec(backbone).preprocess()(x.copy()), y, weights_dir)
        for strategy in args.strategies:
            store = pc.ActivationStore()
            with PeakRss() as naive_rss:
                naive = study.run(strategy, cached=False)
            with PeakRss() as cached_rss:
                cached = study.run(strategy, cached=True, store=store)
            ratio = naive["total"] / cached["total"]
            fit_images = sum(len(f) for f, _, _ in study.folds) * args.epochs
            rows.append((backbone, f"{strategy} %", f"{naive['total']:.1f}", f"{cached['total']:.1f}", f"{ratio:.2f}×",
                         f"{cached['prefix']:.1f} / {cached['fit']:.1f} / {cached['predict']:.1f} / "
                         f"{cached['build']:.1f}",
                         f"{fit_images / naive['fit']:.1f} / {fit_images / cached['fit']:.1f}",
                         f"{naive_rss.peak:.0f} / {cached_rss.peak:.0f}"))
            print(table(rows[-1:], TABLE_HEADER).splitlines()[-1], flush=True)
            if not args.no_profile and not profile_rows:
                profile_rows = [(f"{backbone} {strategy} %", "")] + profile_suffix(study, strategy, store)
                profile_rows += extraction_batches(study, strategy)
            store.clear()
    print("\n## naive (paper-style full-model fit) vs cached, same k-fold study\n")
    print(table(rows, TABLE_HEADER))
    if profile_rows:
        print("\n## where the cached time goes (suffix only, batch %d)\n" % args.batch)
        print(table([(k, f"{v:.1f}" if isinstance(v, float) else v) for k, v in profile_rows], ("measure", "value")))
    if args.sweep_backbones and args.sweep_strategies:
        sweep(args, weights_dir)


TABLE_HEADER = ("backbone", "strategy", "naive s", "cached s", "ratio",
                "cached: prefix / fit / predict / build s", "train img/s naive / cached", "peak RSS MB naive / cached")


def sweep(args, weights_dir: str) -> None:
    """Many cached configurations in one process: peak RSS per configuration and resident RSS after it."""
    sweep_args = argparse.Namespace(**{**vars(args), "folds": 2, "epochs": 1})
    x, y = make_images(args.sweep_images, args.sweep_size, args.seed + 1)
    rows, after = [], []
    for _ in range(args.sweep_repeats):
        for backbone in args.sweep_backbones:
            study = Study(sweep_args, backbone, get_spec(backbone).preprocess()(x.copy()), y, weights_dir)
            for strategy in args.sweep_strategies:
                store = pc.ActivationStore()
                start = time.perf_counter()
                with PeakRss() as peak:
                    study.run(strategy, cached=True, store=store)
                store.clear()
                gc.collect()
                after.append(rss_mb())
                rows.append((len(rows) + 1, backbone, f"{strategy} %", f"{time.perf_counter() - start:.1f}",
                             f"{peak.peak:.0f}", f"{after[-1]:.0f}"))
                print(" | ".join(map(str, rows[-1])), flush=True)
    peaks = [float(r[4]) for r in rows]
    print(f"\n## sweep: {len(rows)} cached configurations in one process ({args.sweep_size} px, "
          f"{args.sweep_images} images, 2 folds, 1 epoch, list run {args.sweep_repeats}×)\n")
    print(table(rows, ("#", "backbone", "strategy", "s", "peak RSS MB", "RSS after MB")))
    print(f"\npeak RSS per configuration: min {min(peaks):.0f} MB, max {max(peaks):.0f} MB "
          f"(max/min {max(peaks) / min(peaks):.2f}); resident after: first {after[0]:.0f} MB, last {after[-1]:.0f} MB "
          f"({after[-1] / after[0] - 1:+.1%}); process high-water mark "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    if args.sweep_repeats > 1:
        half = len(rows) // 2
        growth = max(abs(b - a) / a for a, b in zip(peaks[:half], peaks[half:]))
        print(f"same configuration, later pass vs first: peak RSS differs by at most {growth:.1%}")

if __name__ == "__main__":
    main()
