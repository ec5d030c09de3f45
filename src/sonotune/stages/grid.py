"""Command `sonotune grid`: the study's out-of-date configurations run as jobs (Ray tasks, or here), DVC the bookkeeper.

1. `dvc repro prepare pretrain` on the driver (the prepared data and pretrained backbones every job reads).
2. `dvc status --json`: a configuration (dataset, backbone, strategy) is a job when `finetune@<d>-<b>-<s>` is
   out of date (then finetune and svm run) or only its `svm@…` is (svm alone) — what `dvc repro` would run.
3. Each job ships its stages' dependencies (as dvc.yaml lists them, + `src/` and params.yaml) to a worker,
   which runs the stage commands in a scratch copy (`grid_engine.run_job`) and sends the outputs back.
4. The driver writes the outputs into the workspace and `dvc commit`s the job's stages: dvc.lock records the
   same dependency hashes, params and outputs `dvc repro` would, so a later `dvc repro` runs nothing and
   `dvc push` shares the results. When every job succeeded, `dvc repro report` ends the grid on the driver.

Jobs log to the team's MLflow server (required: the scratch copies are deleted). A job failing for its own
reason is reported in one line and the others go on; Ctrl-C cancels the jobs (each ends its MLflow runs FAILED).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from sonotune import team, tracking
from sonotune.config import Params
from sonotune.errors import ConfigError, SonotuneError
from sonotune.grid_engine import Job, JobResult, StageRun, pack, unpack

PARAMS_FILES = ("params.yaml",)
ALWAYS_SHIPPED = ("src",)  # the whole package: the stage command imports it from the shipped copy
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_DISABLE_TELEMETRY",
                 "TF_CPP_MIN_LOG_LEVEL", "DVC_NO_ANALYTICS")


def require_server() -> str:
    """The tracking server every job logs to: the jobs' scratch copies (and any mlruns/ in them) are deleted."""
    uri = tracking.tracking_uri()
    if not team.is_server(uri):
        raise ConfigError(
            f"MLFLOW_TRACKING_URI is {team.redact(uri)}, not a tracking server: grid jobs run in scratch copies "
            f"that are deleted. Start one (`sonotune server`) and export "
            f"MLFLOW_TRACKING_URI=http://{team.LOOPBACK}:{team.DEFAULT_PORT} (or the team's server)")
    team.check_tracking_server(uri)
    return uri


def configurations(params: Params) -> list[tuple[str, str, int]]:
    study = params.study
    return [(d, b, s) for d in study.datasets for b in study.backbones for s in study.strategies]


def dvc(args: list[str], root: Path, capture: bool = True) -> str:
    result = subprocess.run(["dvc", *args], cwd=root, capture_output=capture, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines() if capture else []
        raise SonotuneError(f"`dvc {' '.join(args)}` failed ({result.returncode})"
                            + (f": {detail[-1]}" if detail else ""))
    return result.stdout or ""


def stale_stages(root: Path) -> set[str]:
    """Names of the stages `dvc repro` would run now (finetune@phantom-vgg16-0, …)."""
    return set(json.loads(dvc(["status", "--json"], root) or "{}"))


def stage_runs(root: Path) -> dict[str, tuple[StageRun, list[str]]]:
    """Every stage of dvc.yaml: (its command and outputs, its dependency paths), by name."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {
            stage.addressing: (StageRun(stage.addressing, stage.cmd, tuple(str(o.def_path) for o in stage.outs)),
                               sorted({str(d.def_path) for d in stage.deps}))
            for stage in repo.index.stages
        }


def plan_jobs(root: Path, params: Params) -> list[Job]:
    """One job per configuration with an out-of-date finetune or svm stage, in the study's order."""
    stale, stages = stale_stages(root), stage_runs(root)
    jobs = []
    for dataset, backbone, strategy in configurations(params):
        name = f"{dataset}-{backbone}-{strategy}"
        finetune, svm = f"finetune@{name}", f"svm@{name}"
        chosen = [finetune, svm] if finetune in stale else [svm] if svm in stale else []
        if not chosen:
            continue
        runs = tuple(stages[s][0] for s in chosen)
        outs = [out for run in runs for out in run.outs]
        deps = {dep for s in chosen for dep in stages[s][1]}
        inputs = sorted(p for p in deps | set(ALWAYS_SHIPPED) | set(PARAMS_FILES)
                        if not any(p == o or p.startswith(o.rstrip("/") + "/") for o in outs))
        jobs.append(Job(name, runs, tuple(inputs)))
    return jobs


def forwarded_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def default_scratch(root: Path) -> Path:
    """A per-workspace scratch folder in the temp dir (stable: a rerun after a crash finds its resume stores)."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / "sonotune-grid" / key


def inputs_stamp(root: Path, paths: tuple[str, ...]) -> str:
    """A cheap fingerprint (path, size, modification time) of the files under `paths`."""
    digest = hashlib.sha256()
    for path in paths:
        files = [root / path] if (root / path).is_file() else sorted((root / path).rglob("*"))
        for file in files:
            if file.is_file():
                stat = file.stat()
                digest.update(f"{file.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def bring_back(root: Path, job: Job, result: JobResult) -> None:
    """Replace the job's outputs in the workspace by the worker's and record them in dvc.lock."""
    for out in job.outs:
        path = root / out
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
    unpack(result.outputs, root)
    dvc(["commit", "--force", "--quiet", *(stage.name for stage in job.stages)], root)


def results_table(results: list[JobResult]) -> str:
    """What ran where, how many attempts and how long."""
    rows = [("configuration", "status", "host", "attempts", "seconds")]
    rows += [(r.name, "done" if r.ok else "FAILED", r.host or "-", str(r.attempts), f"{r.seconds:.0f}")
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def input_archives(root: Path, jobs: list[Job]) -> list[tuple[Job, bytes]]:
    """Each job with its packed inputs; jobs reading the same paths share one archive (one copy to ship)."""
    archives: dict[tuple[str, ...], bytes] = {}
    return [(job, archives.setdefault(job.inputs, pack(root, job.inputs))) for job in jobs]


def run_grid(params: Params, engine, root: Path, echo=print) -> tuple[list[JobResult], float]:
    """Run every out-of-date configuration on `engine`, bring the outputs back; (results, wall seconds)."""
    from tqdm import tqdm

    started = time.monotonic()
    jobs = plan_jobs(root, params)
    if not jobs:
        return [], time.monotonic() - started
    results: list[JobResult] = []
    bar = tqdm(total=len(jobs), desc="grid", unit="config")

    def show(_name: str = "") -> None:
        failed, left = sum(not r.ok for r in results), len(jobs) - len(results)
        running = min(engine.running(), left) if engine.name == "ray" else min(1, left)
        bar.set_postfix_str(f"done {len(results) - failed}, running {running}, failed {failed}")

    show()
    by_name = {job.name: job for job in jobs}
    stamps = {job.name: inputs_stamp(root, job.inputs) for job in jobs}
    try:
        for result in engine.run(input_archives(root, jobs), show):
            job = by_name[result.name]
            if result.ok and inputs_stamp(root, job.inputs) != stamps[job.name]:
                # dvc commit would record the workspace's params and code, not those the job ran with
                result.ok, result.line = False, ("its inputs (params.yaml, src/ or prepared data) changed in the "
                                                 "workspace while it ran: not recorded, rerun `sonotune grid`")
            if result.ok:
                bring_back(root, job, result)
            else:
                bar.write(f"sonotune grid: {result.name} failed: {result.line}")
            results.append(result)
            bar.update()
            show()
    except KeyboardInterrupt:
        bar.write("sonotune grid: cancelling the running jobs (their MLflow runs end FAILED)…")
        engine.cancel()
        raise
    finally:
        bar.close()
    return results, time.monotonic() - started
