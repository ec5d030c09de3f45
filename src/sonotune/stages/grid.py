"""Command `sonotune grid`: the study's out-of-date configurations as jobs on workers that run DVC (Ray tasks, or here).

1. The workspace must be committed (but dvc.lock): each worker checks out that commit, so what it computes is
   what the commit says. `dvc repro prepare pretrain` runs here, and their outputs go to the DVC remote.
2. `dvc status --json`: a configuration (dataset, backbone, strategy) is a job when `finetune@<d>-<b>-<s>` is
   out of date (then finetune and svm run) or only its `svm@…` is (svm alone) — what `dvc repro` would run.
3. Each job is claimed first (an object per claimant under `sonotune-claims/` on the remote, expiring: claims.py):
   a second grid on the same remote or workspace leaves it to the first and waits for it. Claimed jobs run
   `grid_engine.run_job` on a worker: a clone at the commit, `dvc repro --pull`, `dvc push --run-cache`.
4. The driver `dvc pull --run-cache`s and `dvc repro`s the finished configurations: DVC restores their outputs
   from the run cache (nothing recomputed) and writes dvc.lock as its own `dvc repro` would. When every job
   succeeded, `dvc repro report` ends the grid here.

The remote is the workspace's default DVC remote (`dvc remote default NAME`); without one, the workers use this
workspace's DVC cache as their remote, which only workers on this machine can read (the local pool, a local Ray).
Jobs log to the team's MLflow server (required: the clones are deleted). A job failing for its own reason is
reported in one line and the others go on, their results kept on the remote; Ctrl-C cancels the jobs (each ends its
MLflow runs FAILED).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sonotune import claims, team, tracking
from sonotune.config import Params
from sonotune.errors import ConfigError, SonotuneError
from sonotune.grid_engine import Job, JobResult

FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_INSECURE_TLS", "MLFLOW_DISABLE_TELEMETRY",
                 "TF_CPP_MIN_LOG_LEVEL", "DVC_NO_ANALYTICS", "DVC_EXP_NAME")
LOCK_HELD = "Unable to acquire lock"  # what DVC says when another DVC command holds the workspace's lock
LOCK_POLL_S = 2.0
ANOTHER_GRID = "(another grid)"  # the host column of a configuration another grid computed


def require_server() -> str:
    """The tracking server every job logs to: the jobs' clones (and any mlruns/ in them) are deleted."""
    uri = tracking.tracking_uri()
    if not team.is_server(uri):
        raise ConfigError(
            f"MLFLOW_TRACKING_URI is {team.redact(uri)}, not a tracking server: grid jobs run in clones "
            f"that are deleted. Start one (`sonotune server`) and export "
            f"MLFLOW_TRACKING_URI=http://{team.LOOPBACK}:{team.DEFAULT_PORT} (or the team's server)")
    team.check_tracking_server(uri)
    return uri


def dvc(args: list[str], root: Path, lock_wait_s: float = 0.0, echo: bool = False) -> str:
    """Run `dvc args` in `root` (its output captured; never give `--quiet`: DVC then hides the lock error read
    here); while another DVC command holds the workspace's lock, retry for `lock_wait_s` seconds, then stop with
    one line saying so."""
    deadline = time.monotonic() + lock_wait_s
    shown = " ".join(args[:4]) + (" …" if len(args) > 4 else "")  # a restore names every stage
    while True:
        result = subprocess.run([dvc_program(), *args], cwd=root, capture_output=True, text=True)
        if echo and result.stdout.strip():
            print(result.stdout.rstrip(), flush=True)
        if result.returncode == 0:
            return result.stdout
        detail = (result.stderr or result.stdout or "").strip().splitlines()
        if any(LOCK_HELD in line for line in detail):
            if time.monotonic() < deadline:
                time.sleep(LOCK_POLL_S)
                continue
            raise SonotuneError(f"`dvc {shown}`: another DVC command holds this workspace's lock "
                                f"(.dvc/tmp/lock); waited {lock_wait_s:.0f} s (--lock-wait): rerun when it has "
                                f"ended (finished jobs are on the remote: the rerun restores them)")
        raise SonotuneError(f"`dvc {shown}` failed ({result.returncode})" + (f": {detail[-1]}" if detail else ""))


def dvc_program() -> str:
    """This environment's `dvc` (beside the interpreter: found without an activated virtual environment)."""
    return shutil.which("dvc", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])) \
        or "dvc"


def git(args: list[str], root: Path) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def require_committed(root: Path) -> str:
    """The commit the workers check out; one line if tracked files but dvc.lock differ from it (the workers would
    not see those changes)."""
    try:
        commit = git(["rev-parse", "HEAD"], root)
        changed = git(["diff", "--name-only", "HEAD", "--", ".", ":!dvc.lock"], root)
    except (subprocess.CalledProcessError, FileNotFoundError):
        raise ConfigError(f"{root} is not a git repository with a commit: grid workers check out the driver's "
                          "commit (git init && git commit); nothing was run") from None
    if changed:
        files = ", ".join(changed.splitlines()[:5])
        raise ConfigError(f"uncommitted changes in {files}: grid workers check out commit {commit[:12]} and would "
                          "not see them; commit them (or git stash) and rerun; nothing was run")
    return commit


def cache_root(root: Path) -> str:
    """The workspace's DVC cache directory (DVC 3 keeps files/md5/… and runs/ in it, as a remote does)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return repo.cache.local_cache_dir


def default_remote(root: Path) -> str:
    """The workspace's default DVC remote's URL, else its cache directory (readable by workers on this machine)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        return repo.config["remote"][name]["url"] if name else cache_root(root)


def is_cache_of(root: Path, remote: str) -> bool:
    return Path(remote).resolve() == Path(cache_root(root)).resolve()


def configurations(params: Params) -> list[tuple[str, str, int]]:
    study = params.study
    return [(d, b, s) for d in study.datasets for b in study.backbones for s in study.strategies]


def plan_jobs(root: Path, params: Params, commit: str, remote: str, lock_wait_s: float = 0.0) -> list[Job]:
    """One job per configuration with an out-of-date finetune or svm stage, in the study's order."""
    stale = set(json.loads(dvc(["status", "--json"], root, lock_wait_s) or "{}"))
    jobs = []
    for dataset, backbone, strategy in configurations(params):
        name = f"{dataset}-{backbone}-{strategy}"
        finetune, svm = f"finetune@{name}", f"svm@{name}"
        chosen = (finetune, svm) if finetune in stale else (svm,) if svm in stale else ()
        if chosen:
            jobs.append(Job(name, chosen, commit, str(root.resolve()), remote))
    return jobs


def forwarded_env() -> dict[str, str]:
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def default_scratch() -> Path:
    """The jobs' clones: in each node's temp folder (a retry on the same node finds its resume store)."""
    return Path(tempfile.gettempdir()) / "sonotune-grid"


def wait_for_claims(store: claims.ClaimStore, jobs: list[Job], bar) -> None:
    """Until the other grids' claims on `jobs` are released or expired."""
    waiting = list(jobs)
    while waiting:
        waiting = [job for job in waiting if claims.held_by_others(store, job.folder)]
        if waiting:
            bar.set_postfix_str(f"waiting for {len(waiting)} configuration(s) another grid claimed")
            time.sleep(LOCK_POLL_S)


def results_table(results: list[JobResult]) -> str:
    """What ran where, how many attempts and how long."""
    rows = [("configuration", "status", "host", "attempts", "seconds")]
    rows += [(r.name, "done" if r.ok else "FAILED", r.host or "-", str(r.attempts), f"{r.seconds:.0f}")
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def prepare_inputs(root: Path, remote: str, lock_wait_s: float) -> None:
    """The prepared data and pretrained backbones every job reads: restored from the remote where a teammate
    computed them, else computed here; then on the remote (with their run-cache entries) for the workers."""
    on_remote = not is_cache_of(root, remote)
    dvc(["repro", *(["--pull"] if on_remote else []), "prepare", "pretrain"], root, lock_wait_s)
    if on_remote:
        dvc(["push", "--run-cache"], root, lock_wait_s)


def restore(root: Path, remote: str, stages: list[str], lock_wait_s: float) -> None:
    """The jobs' outputs into the workspace from the run cache: `dvc repro --pull` restores them, runs nothing."""
    if stages:
        dvc(["repro", *([] if is_cache_of(root, remote) else ["--pull"]), *stages], root, lock_wait_s, echo=True)


def run_grid(params: Params, engine, root: Path, remote: str, claim_ttl_s: float, lock_wait_s: float
             ) -> tuple[list[JobResult], float]:
    """Run every out-of-date configuration not claimed by another grid on `engine`, then restore every finished
    one into the workspace; (results, wall seconds)."""
    from tqdm import tqdm

    started = time.monotonic()
    commit = require_committed(root)
    jobs = plan_jobs(root, params, commit, remote, lock_wait_s)
    if not jobs:
        return [], time.monotonic() - started
    store = claims.store_of(root, is_cache_of(root, remote))
    held = claims.claim_each(store, [job.folder for job in jobs], claim_ttl_s)
    mine = [job for job in jobs if job.folder in held]
    others = [job for job in jobs if job not in mine]
    results: list[JobResult] = []
    bar = tqdm(total=len(jobs), desc="grid", unit="config")

    def show(_name: str = "") -> None:
        failed, left = sum(not r.ok for r in results), len(mine) - len(results)
        running = min(engine.running(), left) if engine.name == "ray" else min(1, left)
        bar.set_postfix_str(f"done {len(results) - failed}, running {running}, failed {failed}, "
                            f"claimed by another grid {len(others)}")

    show()
    try:
        for result in engine.run(mine, show):
            claims.release(store, next(job for job in mine if job.name == result.name).folder)
            if not result.ok:
                bar.write(f"sonotune grid: {result.name} failed: {result.line}")
            results.append(result)
            bar.update()
            show()
        wait_for_claims(store, others, bar)
        bar.update(len(others))
    except KeyboardInterrupt:
        bar.write("sonotune grid: cancelling the running jobs (their MLflow runs end FAILED)…")
        engine.cancel()
        raise
    finally:
        for job in mine:
            claims.release(store, job.folder)
        bar.close()
    done = {r.name for r in results if r.ok}
    restore(root, remote, [s for job in jobs if job.name in done or job in others for s in job.stages], lock_wait_s)
    results += [JobResult(job.name, True, host=ANOTHER_GRID, attempts=0) for job in others]
    return results, time.monotonic() - started
