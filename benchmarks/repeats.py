"""Wall time of `cv.repeats: 3` against 1: `sonotune finetune` (and `sonotune svm`) of one configuration.

Run from the repository root: `python benchmarks/repeats.py [--strategy 0] [--repeats 1 3]`. One copy of the repo
with the tests' tiny study (phantom, 36 images, vgg16 at 32 px, 3 folds, 2 epochs), prepared once; then per
repeat count the finetune and svm stages of one configuration, each timed as a whole command (process start,
imports and MLflow logging included), into a fresh MLflow store, and the folds' own time (the parent run's
`fold_seconds_mean` × folds, from MLflow: training, prediction, fold logging; the metrics JSON holds no timings).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.workspace import copy_repo, run, tiny_params  # noqa: E402


def timed(cmd: list[str], repo: Path) -> float:
    start = time.monotonic()
    run(cmd, repo)
    return time.monotonic() - start


def fold_seconds_mean(repo: Path) -> float:
    """The mean fold time the MLP parent run of the repo's local MLflow store logged."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    parent = client.search_runs(experiments, "tags.fold = 'all' and tags.classifier = 'mlp'")[0]
    return parent.data.metrics["fold_seconds_mean"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", type=int, default=0)
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 3])
    args = parser.parse_args()
    config = ["--dataset", "phantom", "--backbone", "vgg16", "--strategy", str(args.strategy)]
    with tempfile.TemporaryDirectory() as tmp:
        repo = copy_repo(Path(tmp) / "repo", tiny_params())
        run(["sonotune", "prepare", "--dataset", "phantom"], repo)
        for repeats in args.repeats:
            params = yaml.safe_load((repo / "params.yaml").read_text())
            params["cv"]["repeats"] = repeats
            (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            shutil.rmtree(repo / "mlruns", ignore_errors=True)
            finetune = timed(["sonotune", "finetune", *config], repo)
            metrics = json.loads((repo / f"runs/phantom/vgg16/{args.strategy}/mlp_metrics.json").read_text())
            folds = fold_seconds_mean(repo) * len(metrics["folds"])
            svm = timed(["sonotune", "svm", *config], repo)
            print(f"cv.repeats: {repeats}: finetune {finetune:.1f} s ({len(metrics['folds'])} folds: {folds:.1f} s), "
                  f"svm {svm:.1f} s", flush=True)


if __name__ == "__main__":
    main()
