"""Speed benchmark of the study's training: naive (the paper's way), cached and batched, one k-fold study each.

Run `make bench` (ResNet50, 224 px, 128 images, 10 epochs, 5 folds, strategies 15 and 0; `BENCH_ARGS=--help`
for the knobs, e.g. `BENCH_ARGS="--images 40 --epochs 4"` for a quick look); on a GPU `benchmarks/gpu_bench.sh`.

Every column runs the library's own training (`sonotune.models.training`), with frozen weights from one file
(`finetune.weights` = a file, as ImageNet weights would be: the frozen part is the same in every fold):
- naive: `train_fold` without a cache, per fold (backbone built and loaded, whole model fitted) + features;
- cached: `train_fold` with one `PrefixCache` shared by the folds (backbone built once, frozen prefix run once,
  only the layers after it trained, compiled suffix reused) + features from the cached activations;
- batched: `train_folds(cfg, ...)` with `finetune.parallel_folds: true` (every fold at once under `jax.vmap`),
  run in a JAX subprocess when this process is not on JAX; "n/a" when the key or JAX is missing.
Per row: seconds, ratios to naive, where the cached time goes (build / prefix / fit / predict), the test AUC
(mean over folds: `--precisions float32 mixed_bfloat16` compares the dtype policies), and the projected wall
time of the paper's grid on this machine from the measured per-image-per-epoch costs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sonotune.cli import _quiet_tensorflow  # noqa: E402

_quiet_tensorflow()  # as every sonotune command: no native-library banner, no tf.function retracing advice

import keras  # noqa: E402

from sonotune.config import Finetune  # noqa: E402
from sonotune.cv import Fold  # noqa: E402
from sonotune.models import prefix_cache as pc  # noqa: E402
from sonotune.models import training  # noqa: E402
from sonotune.models.backbones import create_backbone, get_spec  # noqa: E402

# the paper's grid (Bal-Ghaoui et al. 2023): 4 datasets, 5 backbones × 7 strategies, 5-fold CV, 30 epochs, batch 4
GRID = dict(datasets=4, images=2235, configurations=35, folds=5, epochs=30)
BATCHED_NA = "n/a (needs finetune.parallel_folds, JAX backend)"

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


def make_folds(y: np.ndarray, k: int, seed: int) -> list[Fold]:
    """Stratified folds (fit, val, test); val = every 5th training index (numpy only)."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), int)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        fold_of[members] = np.arange(len(members)) % k
    folds = []
    for f in range(k):
        train, test = np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)
        is_val = np.arange(len(train)) % 5 == 4
        folds.append(Fold(index=f, fit=train[~is_val], val=train[is_val], test=test))
    return folds


def auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by ranks (ties count half)."""
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    for value in np.unique(score):  # average ranks of ties
        tied = score == value
        ranks[tied] = ranks[tied].mean()
    n1, n0 = int(y.sum()), int(len(y) - y.sum())
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)) if n1 and n0 else float("nan")


# ------------------------------------------------------------------------------------------ the study


class Study:
    """One backbone's k-fold study on fixed images and frozen weights from one file."""

    def __init__(self, args, backbone: str, x: np.ndarray, y: np.ndarray, weights_dir: str):
        self.args, self.backbone, self.x, self.y = args, backbone, x, y
        self.folds = make_folds(y, args.folds, args.seed)
        self.weights = os.path.join(weights_dir, f"{backbone}_{x.shape[1]}.weights.h5")
        if not os.path.exists(self.weights):  # one fixed set of frozen weights, as ImageNet's would be
            keras.utils.set_random_seed(args.seed)
            create_backbone(backbone, x.shape[1], None).save_weights(self.weights)
            keras.backend.clear_session()

    def config(self, precision: str = "float32", **extra) -> Finetune:
        return Finetune(weights=self.weights, input_size=self.x.shape[1], epochs=self.args.epochs,
                        batch_size=self.args.batch, learning_rate=self.args.lr, dense_units=512, dropout=0.5,
                        monitor="val_auc", precision=precision, **extra)

    @property
    def fit_image_epochs(self) -> int:
        return sum(len(f.fit) for f in self.folds) * self.args.epochs

    def _scores(self, model, cache) -> tuple[float, float]:
        start = time.perf_counter()
        outputs = training.predict_outputs(model, self.x, cache)
        return time.perf_counter() - start, np.asarray(outputs["probabilities"])[:, 1]

    def run(self, strategy: int, cached: bool, precision: str = "float32") -> dict:
        """The k folds one after another (`train_fold`, as `iter_train_folds` runs them) + feature predictions."""
        cfg, cache = self.config(precision), training.PrefixCache() if cached else None
        times = {"build": 0.0, "prefix": 0.0, "fit": 0.0, "predict": 0.0}
        aucs = []
        for fold in self.folds:
            start = time.perf_counter()
            trained = training.train_fold(cfg, self.args.seed, self.backbone, strategy, self.x, self.y, fold, cache)
            if not cached:  # the naive build: measured once per fold outside the fit
                times["fit"] += time.perf_counter() - start
            seconds, score = self._scores(trained.model, cache)
            times["predict"] += seconds
            aucs.append(auc(self.y[fold.test], score[fold.test]))
            del trained
            keras.backend.clear_session()
            gc.collect()
        if cached:
            times.update({k: float(cache.seconds[k]) for k in ("build", "prefix", "fit")})
            cache.clear()
        else:
            times["build"] = self.naive_build_seconds(strategy, precision) * len(self.folds)
            times["fit"] -= times["build"]
        times["total"] = sum(times.values())
        times["auc"] = float(np.mean(aucs))
        times["aucs"] = aucs
        return times

    def naive_build_seconds(self, strategy: int, precision: str) -> float:
        """One fold's model built and loaded the paper's way (what naive pays per fold)."""
        start = time.perf_counter()
        training.build_fold_model(self.config(precision), self.backbone, strategy, self.args.seed)
        seconds = time.perf_counter() - start
        keras.backend.clear_session()
        gc.collect()
        return seconds

    def run_batched(self, strategy: int) -> dict:
        """All folds at once through the batch contract `train_folds` with parallel_folds (JAX)."""
        cfg, cache = self.config(parallel_folds=True), training.PrefixCache()
        start = time.perf_counter()
        trained = training.train_folds(cfg, self.args.seed, self.backbone, strategy, self.x, self.y, self.folds,
                                       cache)
        fit = time.perf_counter() - start
        predict, aucs = 0.0, []
        for fold, result in zip(self.folds, trained, strict=True):
            seconds, score = self._scores(result.model, cache)
            predict += seconds
            aucs.append(auc(self.y[fold.test], score[fold.test]))
        return {"fit": fit, "predict": predict, "total": fit + predict, "auc": float(np.mean(aucs)), "aucs": aucs}


def batched_unavailable() -> str | None:
    """Why the batched column cannot run here (None when it can)."""
    if "parallel_folds" not in Finetune.model_fields:
        return BATCHED_NA
    if keras.backend.backend() == "jax":
        return None
    try:
        import jax  # noqa: F401
    except ImportError:
        return BATCHED_NA
    return None


def batched_in_jax(args, backbone: str, strategy: int, weights_dir: str) -> dict | str:
    """The batched study in a KERAS_BACKEND=jax subprocess (this process's backend is fixed at import)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        argv = [sys.executable, __file__, "--batched-only", out.name, "--backbones", backbone, "--strategies",
                str(strategy), "--weights-dir", weights_dir, "--size", str(args.size), "--images", str(args.images), "--epochs",
                str(args.epochs), "--folds", str(args.folds), "--batch", str(args.batch), "--lr", str(args.lr),
                "--seed", str(args.seed)]
        done = subprocess.run(argv, env=dict(os.environ, KERAS_BACKEND="jax"), capture_output=True, text=True)
        if done.returncode != 0:
            return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:120]
        return json.loads(Path(out.name).read_text())


# ------------------------------------------------------------------------------------------ projection


def grid_hours(study: Study, times: dict, repeats: int = 1) -> float:
    """The paper's grid on this machine, if every configuration cost what this one did: fit seconds per
    image-epoch × the grid's image-epochs, prefix seconds per image once per configuration and dataset,
    predict seconds per image per fold, build seconds per fold; repeats multiply the folds."""
    n, k = len(study.x), len(study.folds)
    fit_fraction = sum(len(f.fit) for f in study.folds) / (k * n)
    folds = GRID["configurations"] * GRID["folds"] * repeats  # per dataset
    image_epochs = GRID["configurations"] * GRID["folds"] * repeats * GRID["epochs"] * GRID["images"] * fit_fraction
    seconds = times["fit"] / study.fit_image_epochs * image_epochs
    seconds += times.get("prefix", 0.0) / n * GRID["images"] * GRID["configurations"]
    seconds += times["predict"] / (n * k) * GRID["images"] * folds
    seconds += times.get("build", 0.0) / k * folds * GRID["datasets"]
    return seconds / 3600


# ------------------------------------------------------------------------------------------ profile


def profile_suffix(study: Study, strategy: int) -> list[tuple[str, float]]:
    """Where a cached training step goes: the suffix's train step at steps_per_execution 1 and 64."""
    fold = study.folds[0]
    cfg = study.config()
    b, epochs = study.args.batch, 3
    store = pc.ActivationStore()
    rows = []
    for spe in (1, training.SUFFIX_STEPS_PER_EXECUTION):
        model = training.build_fold_model(cfg, study.backbone, strategy, study.args.seed)
        split, reason = pc.split_model(model)
        if split is None:
            return [("no cut", reason)]
        arrays = store.get(split, study.x)
        suffix = pc.SuffixPool().borrow(pc.build_suffix(split.cut, model.outputs),
                                        model.get_compile_config() | {"steps_per_execution": spe})
        inputs, y = pc._inputs(arrays, fold.fit), keras.utils.to_categorical(study.y[fold.fit], 2)
        steps = epochs * -(-len(fold.fit) // b)
        start = time.perf_counter()
        suffix.fit(inputs, y, epochs=1, batch_size=b, verbose=0)  # trace + warm up
        first = time.perf_counter() - start
        start = time.perf_counter()
        suffix.fit(inputs, y, epochs=epochs, batch_size=b, verbose=0, shuffle=True)
        rows.append((f"train step, steps_per_execution={spe}, ms", (time.perf_counter() - start) / steps * 1e3))
        if spe == 1:
            rows.append(("trace of a new suffix's train step (once per study), s", first - rows[-1][1] / 1e3 * steps / epochs))
            rows.append(("trainable parameters (suffix + head)", sum(int(np.prod(w.shape)) for w in suffix.trainable_weights)))
        keras.backend.clear_session()
        gc.collect()
    rows.append(("prefix extraction, img/s", len(study.x) / store.last_extract_s))
    store.clear()
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
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--precisions", nargs="+", default=["float32"],
                        help="finetune.precision values, e.g. float32 mixed_bfloat16 (naive and cached per value)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive column (ratios then n/a)")
    parser.add_argument("--naive-all-precisions", action="store_true",
                        help="the naive column for every precision (default: float32 only)")
    parser.add_argument("--no-batched", action="store_true", help="skip the batched column")
    parser.add_argument("--no-profile", action="store_true", help="skip the where-the-time-goes profile")
    parser.add_argument("--batched-only", metavar="JSON", help=argparse.SUPPRESS)  # the JAX subprocess
    parser.add_argument("--weights-dir", help=argparse.SUPPRESS)  # its frozen weights: the parent's files
    parser.add_argument("--sweep", action="store_true", help="also the RSS sweep of cached configurations")
    parser.add_argument("--sweep-backbones", nargs="*",
                        default=["vgg16", "vgg19", "resnet50", "resnet101", "inceptionv3"])
    parser.add_argument("--sweep-strategies", nargs="*", type=int, default=[0, 15])
    parser.add_argument("--sweep-size", type=int, default=75)
    parser.add_argument("--sweep-images", type=int, default=24)
    parser.add_argument("--sweep-repeats", type=int, default=2, help="2: compare each configuration with itself")
    return parser.parse_args(argv)


def table(rows, header) -> str:
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    lines += [" | ".join(str(c) for c in row) for row in rows]
    return "\n".join(lines)


TABLE_HEADER = ("backbone", "strategy", "precision", "naive s", "cached s", "batched s", "naive/cached",
                "naive/batched", "cached: build / prefix / fit / predict s", "test AUC naive / cached / batched")
GRID_HEADER = ("backbone", "strategy", "precision", "naive h", "cached h", "batched h", "naive h ×3 repeats",
               "cached h ×3", "batched h ×3")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    load = os.getloadavg()
    return (f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), load average at start {load[0]:.1f}, "
            f"backend {keras.backend.backend()}, keras {keras.__version__}")


def fmt(value, spec=".1f") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return format(value, spec) if isinstance(value, float) else str(value)


def batched_only(args) -> None:
    """Subprocess mode: the batched study of one (backbone, strategy), as JSON."""
    x, y = make_images(args.images, args.size, args.seed)
    backbone, strategy = args.backbones[0], args.strategies[0]
    weights_dir = args.weights_dir or tempfile.mkdtemp(prefix="bench-weights-")
    study = Study(args, backbone, get_spec(backbone).preprocess()(x.copy()), y, weights_dir)
    Path(args.batched_only).write_text(json.dumps(study.run_batched(strategy)))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.batched_only:
        return batched_only(args)
    print(f"# {machine()}\nimages={args.images} size={args.size} folds={args.folds} epochs={args.epochs} "
          f"batch={args.batch} precisions={args.precisions}", flush=True)
    weights_dir = tempfile.mkdtemp(prefix="bench-weights-")
    x, y = make_images(args.images, args.size, args.seed)
    rows, grid_rows, profile_rows = [], [], []
    started = time.perf_counter()
    for backbone in args.backbones:
        study = Study(args, backbone, get_spec(backbone).preprocess()(x.copy()), y, weights_dir)
        for strategy in args.strategies:
            for precision in args.precisions:
                # the paper's baseline is float32: naive only there (its bf16 speed: docs/benchmarks.md)
                skip_naive = args.no_naive or (precision != "float32" and not args.naive_all_precisions)
                naive = None if skip_naive else study.run(strategy, cached=False, precision=precision)
                cached = study.run(strategy, cached=True, precision=precision)
                batched = "skipped" if args.no_batched or precision != "float32" else batched_unavailable()
                if batched is None:
                    batched = (study.run_batched(strategy) if keras.backend.backend() == "jax"
                               else batched_in_jax(args, backbone, strategy, weights_dir))
                b = batched if isinstance(batched, dict) else None
                n_total = naive["total"] if naive else None
                rows.append((backbone, f"{strategy} %", precision, fmt(n_total), fmt(cached["total"]),
                             fmt(b["total"]) if b else batched,
                             f"**{n_total / cached['total']:.2f}×**" if naive else "n/a",
                             f"{n_total / b['total']:.2f}×" if naive and b else "n/a",
                             " / ".join(fmt(cached[k]) for k in ("build", "prefix", "fit", "predict")),
                             " / ".join(fmt(t["auc"], ".3f") if t else "n/a" for t in (naive, cached, b))))
                print(" | ".join(rows[-1]), flush=True)
                hours = [grid_hours(study, t, r) if t else "n/a" for r in (1, 3) for t in (naive, cached, b)]
                grid_rows.append((backbone, f"{strategy} %", precision, *(fmt(h) for h in hours)))
                print(f"per-fold test AUC {precision}: naive", [f"{a:.3f}" for a in naive["aucs"]] if naive else "n/a",
                      "cached", [f"{a:.3f}" for a in cached["aucs"]], flush=True)
            if not args.no_profile and not profile_rows:
                profile_rows = [(f"{backbone} {strategy} %", "")] + profile_suffix(study, strategy)
    print(f"\n## naive (the paper's full-model fit per fold) vs cached vs batched, same k-fold study "
          f"({time.perf_counter() - started:.0f} s)\n")
    print(table(rows, TABLE_HEADER))
    print(f"\n## projected wall time of the paper's grid on this machine ({GRID['datasets']} datasets, "
          f"{GRID['images']} images, {GRID['configurations']} configurations, {GRID['folds']} folds, "
          f"{GRID['epochs']} epochs, batch {args.batch}), if every configuration cost like the row\n")
    for precision in args.precisions:  # the grid as the mean of the measured strategies (all 7: the paper's mix)
        mine = [row for row in grid_rows if row[2] == precision]
        means = []
        for column in range(3, len(GRID_HEADER)):
            values = [row[column] for row in mine]
            means.append(fmt(float(np.mean([float(v) for v in values]))) if "n/a" not in values else "n/a")
        grid_rows.append(("mean of the rows", "", precision, *means))
    print(table(grid_rows, GRID_HEADER))
    if profile_rows:
        print("\n## where a cached training step goes (suffix only, batch %d)\n" % args.batch)
        print(table([(k, fmt(v)) for k, v in profile_rows], ("measure", "value")))
    if args.sweep and args.sweep_backbones and args.sweep_strategies:
        sweep(args, weights_dir)


def sweep(args, weights_dir: str) -> None:
    """Many cached configurations in one process: peak RSS per configuration and resident RSS after it."""
    sweep_args = argparse.Namespace(**{**vars(args), "folds": 2, "epochs": 1})
    x, y = make_images(args.sweep_images, args.sweep_size, args.seed + 1)
    rows, after = [], []
    for _ in range(args.sweep_repeats):
        for backbone in args.sweep_backbones:
            study = Study(sweep_args, backbone, get_spec(backbone).preprocess()(x.copy()), y, weights_dir)
            for strategy in args.sweep_strategies:
                start = time.perf_counter()
                with PeakRss() as peak:
                    study.run(strategy, cached=True)
                gc.collect()
                after.append(rss_mb())
                rows.append((len(rows) + 1, backbone, f"{strategy} %", f"{time.perf_counter() - start:.1f}",
                             f"{peak.peak:.0f}", f"{after[-1]:.0f}"))
                print(" | ".join(map(str, rows[-1])), flush=True)
    peaks = [float(r[4]) for r in rows]
    print(f"\n## sweep: {len(rows)} cached configurations in one process ({args.sweep_size} px, "
          f"{args.sweep_images} images, 2 folds, 1 epoch, list run {args.sweep_repeats}×)\n")
    print(table(rows, ("#", "backbone", "strategy", "s", "peak RSS MB", "RSS after MB")))
    print(f"\npeak RSS per configuration: min {min(peaks):.0f} MB, max {max(peaks):.0f} MB; resident after: first "
          f"{after[0]:.0f} MB, last {after[-1]:.0f} MB ({after[-1] / after[0] - 1:+.1%}); process high-water mark "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
