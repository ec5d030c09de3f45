"""Wall time of the study grid on DVC's experiment queue with 1 and with 2 workers, logging to one MLflow server.

Run from the repository root: `python benchmarks/queue_workers.py [--strategies 0 15] [--jobs 1 2]`. Each
worker count gets a fresh copy of the repo (the tests' tiny study: phantom, vgg16, 32 px, 2 folds, 1 epoch) and a
fresh `sonotune server`; the time runs from `sonotune queue --jobs N` until no experiment is queued or running.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.workspace import BIN, copy_repo, project_env, run, tiny_params  # noqa: E402
from tests.servers import mlflow_server, queue_status  # noqa: E402

TINY = {"finetune.epochs": 1, "cv.n_splits": 2, "svm.inner_splits": 2}


def time_queue(jobs: int, strategies: list[int], workdir: Path) -> float:
    repo = copy_repo(workdir / f"repo-j{jobs}", tiny_params(**TINY, **{"study.strategies": strategies}))
    with mlflow_server(workdir / f"server-j{jobs}") as uri:
        env = project_env(MLFLOW_TRACKING_URI=uri)
        start = time.monotonic()
        run([str(BIN / "sonotune"), "queue", "--jobs", str(jobs)], repo, env)
        while any(word in (status := queue_status(repo, env)) for word in (" Queued", " Running")):
            time.sleep(2)
        seconds = time.monotonic() - start
        assert "Failed" not in status, status
        while "0 active, 0 idle" not in queue_status(repo, env):  # let the workers exit before the server stops
            time.sleep(2)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", type=int, nargs="+", default=[0, 15])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for jobs in args.jobs:
            seconds = time_queue(jobs, args.strategies, Path(tmp))
            print(f"{len(args.strategies)} configurations, {jobs} worker(s): {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
