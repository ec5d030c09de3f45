"""A grid job and where it runs: in this process (`local`) or as Ray tasks (`ray`). Workers run DVC; Ray only schedules.

A `Job` is one configuration's stages at one git commit. `run_job` is all a worker does, and all a SLURM or
Kubernetes job would do (`sonotune grid-job --origin REPO --commit C --remote URL --stage S …`):
1. lock `<scratch>/<commit>-<job>.lock` (a retry waits there until a previous attempt's commands have exited),
2. clone the driver's repository pinned to the commit into `<scratch>/<commit>-<job>/` (a retry reuses the clone,
   cleaned but for `.sonotune/`, the resume store of finished folds), with the team's DVC remote as its default,
3. `dvc repro --pull <stages>`: upstream stages (prepare, pretrain) and the data are restored from the remote and
   its run cache, the configuration's own stages are computed (their MLflow runs carry the commit: a real checkout),
4. `dvc push --run-cache`: the outputs and the run-cache entries go to the remote, where the driver's `dvc pull
   --run-cache` and `dvc repro` find them and restore them without running anything,
5. remove the clone (inside the lock), or return one line saying why the job failed.
The stage commands run in their own process group, which dies with the worker (PR_SET_PDEATHSIG: SIGTERM, on which
a stage marks its MLflow runs FAILED and keeps its finished folds).

Ray is imported only by `RayEngine` (the optional extra `sonotune[ray]`). Ray retries a task whose worker or
node died (`max_retries`); a job failing for its own reason returns a failed `JobResult` and is not retried.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from sonotune.errors import SonotuneError

RESUME_FOLDER = ".sonotune"  # kept across attempts in the clone (resume.RESUME_ROOT lives there)
GRID_REMOTE = "sonotune-grid"  # the remote's name in each clone's .dvc/config.local
TERM_GRACE_S = 60  # a stage given SIGTERM marks its runs FAILED within seconds; then it is killed
RAY_CONNECT_TIMEOUT_S = 10  # ray.init retries an address that refuses for many minutes: the preflight does not
# each command runs under a shell that, given SIGTERM (the worker died: PR_SET_PDEATHSIG), passes it to its whole
# process group — DVC and the stage it started, which the signal would otherwise not reach — and waits for them
GROUP_TERM = 'trap "trap \'\' TERM; kill -TERM 0; wait; exit 143" TERM; "$@" & wait $!'


@dataclass(frozen=True)
class Job:
    """A configuration's stages (`finetune@…`, `svm@…`), reproduced in a clone of `origin` at `commit`."""

    name: str
    stages: tuple[str, ...]
    commit: str
    origin: str  # the driver's git repository (a path the workers see, or a URL)
    remote: str  # the DVC remote the workers pull from and push to (a URL or a directory)

    @property
    def folder(self) -> str:
        return f"{self.commit[:12]}-{self.name}"


@dataclass
class JobResult:
    name: str
    ok: bool
    line: str = ""  # why it failed, in one line
    host: str = ""
    seconds: float = 0.0
    attempts: int = 1
    pid: int = 0


def job_commands(job: Job) -> list[list[str]]:
    """What a worker runs in its clone, in order (see the module docstring)."""
    return [
        ["git", "checkout", "--quiet", "--force", "--detach", job.commit],
        ["git", "clean", "-q", "-ffdx", "--exclude", RESUME_FOLDER],
        ["dvc", "remote", "add", "--local", "--default", "--force", GRID_REMOTE, job.remote],
        ["dvc", "repro", "--pull", *job.stages],
        ["dvc", "push", "--run-cache", "--quiet", *job.stages],
    ]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the worker that started it dies (Linux), own process group."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the command's process group (the stage ends its runs FAILED), SIGKILL after a grace."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait(process: subprocess.Popen) -> int:
    """The command's exit status, waiting in short steps: Ray cancels a task by raising KeyboardInterrupt in its
    thread, which a single blocking wait would only see once the command had ended by itself."""
    while True:
        try:
            return process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def _why(log: Path, offset: int) -> str:
    """The stage's own error line (sonotune prints one), else DVC's, else the last line the command printed."""
    with log.open("rb") as stream:
        stream.seek(offset)
        text = stream.read().decode(errors="replace")
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("sonotune ") and ": error: " in line]
    errors = [line for line in lines if "error" in line.lower()]
    return (own or errors or lines or ["no output"])[-1][-400:]


def worker_env(copy: Path, env: dict[str, str]) -> dict[str, str]:
    """The commands' environment: the worker's, the driver's tracking settings, this interpreter's tools first and
    the clone's `src/` first on PYTHONPATH (the code that runs is the commit's, the code dvc.lock hashes)."""
    merged = dict(os.environ) | env
    merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy / "src"), os.environ.get("PYTHONPATH")]))
    merged["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), merged.get("PATH", "")])
    return merged


def _clone(job: Job, copy: Path) -> None:
    """A clone of the driver's repository (kept by a retry: its resume store resumes the finished folds)."""
    if not (copy / ".git").exists():
        copy.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", str(copy)], check=True)
    subprocess.run(["git", "-C", str(copy), "fetch", "-q", job.origin, job.commit], check=True,
                   capture_output=True, text=True)


def run_job(job: Job, scratch: str, env: dict[str, str]) -> JobResult:
    """Run `job` in `<scratch>/<job.folder>/` (see the module docstring); never raises for the job's own failure."""
    started, host = time.monotonic(), socket.gethostname()
    scratch_dir = Path(scratch)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    copy = scratch_dir / job.folder

    def failed(line: str) -> JobResult:
        return JobResult(job.name, False, line, host, time.monotonic() - started, pid=os.getpid())

    with open(scratch_dir / f"{job.folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held by the commands too (inherited): a killed worker's child first ends
        try:
            _clone(job, copy)
        except subprocess.CalledProcessError as exc:
            return failed(f"git could not fetch commit {job.commit[:12]} from {job.origin}: "
                          f"{(exc.stderr or '').strip().splitlines()[-1:] or exc}")
        log = copy / RESUME_FOLDER / "grid.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        for argv in job_commands(job):
            with log.open("a") as out:
                out.write(f"$ {' '.join(argv)}\n")
                out.flush()
                offset = out.tell()
                process = subprocess.Popen(["/bin/sh", "-c", GROUP_TERM, "sh", *argv], cwd=copy,
                                           env=worker_env(copy, env), stdout=out, stderr=subprocess.STDOUT,
                                           pass_fds=(lock.fileno(),), preexec_fn=_die_with_parent)
                try:
                    code = _wait(process)
                except BaseException:  # the task was cancelled (Ctrl-C on the driver): end the stage cleanly
                    _stop(process)
                    raise
            if code != 0:
                return failed(f"`{' '.join(argv[:3])} …` exited {code}: {_why(log, offset)} (log: {host}:{log})")
        shutil.rmtree(copy, ignore_errors=True)  # inside the lock: a second attempt of this job clones afresh
    return JobResult(job.name, True, "", host, time.monotonic() - started, pid=os.getpid())


@dataclass
class Resources:
    """What one job asks of a Ray node."""

    cpus: float = 1.0
    gpus: float | None = None  # None: one when the cluster has GPUs, else none
    memory_gb: float | None = None
    max_retries: int = 3


class LocalEngine:
    """Jobs one after the other in this process (no Ray)."""

    name = "local"
    dashboard_url = None

    def __init__(self, scratch: Path, env: dict[str, str]):
        self.scratch, self.env = scratch, env

    def run(self, jobs: list[Job], on_start: Callable[[str], None]) -> Iterator[JobResult]:
        for job in jobs:
            on_start(job.name)
            yield run_job(job, str(self.scratch), self.env)

    def running(self) -> int:
        return 0

    def cancel(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


def require_ray(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Preflight of `--engine ray`, before any work: Ray importable, and the cluster RAY_ADDRESS names (if any)
    accepting a connection within `timeout` seconds; else one line saying what to do."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise SonotuneError("--engine ray needs Ray: pip install 'sonotune[ray]' (or use --engine local); nothing "
                            "was run")
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or ("timed out" if isinstance(exc, TimeoutError) else str(exc))
        raise SonotuneError(f"RAY_ADDRESS={address}: no Ray cluster answered within {timeout:.0f} s ({reason}): "
                            "start it (`ray start --head`), fix RAY_ADDRESS, or unset it to run on a local Ray; "
                            "nothing was run") from None


class RayEngine:
    """Jobs as Ray tasks on the cluster RAY_ADDRESS names, else on a local one of `local_cpus` CPUs."""

    name = "ray"

    def __init__(self, scratch: Path, env: dict[str, str], resources: Resources, local_cpus: int | None = None):
        try:
            import ray
        except ImportError:
            raise SonotuneError("--engine ray needs Ray: pip install 'sonotune[ray]'") from None
        self.ray = ray
        self.scratch, self.env, self.resources = scratch, env, resources
        options = {"log_to_driver": False, "configure_logging": True, "logging_level": "ERROR"}
        if not os.environ.get("RAY_ADDRESS"):
            # a new local Ray of its own, even where `ray start` left a cluster (which refuses num_cpus)
            options["address"] = "local"
            options["num_cpus"] = local_cpus  # the dashboard starts when ray[default] is installed
            options["object_store_memory"] = 80 * 2**20  # jobs pass a few names, never data: the minimum
        context = ray.init(**options)
        self.dashboard_url = getattr(context, "dashboard_url", None) or None
        self.gpus = resources.gpus if resources.gpus is not None else (
            1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0)
        self.pending: dict = {}
        self.board = _board_actor(ray).remote()

    def _task_options(self) -> dict:
        options = {"num_cpus": self.resources.cpus, "num_gpus": self.gpus, "max_retries": self.resources.max_retries,
                   "retry_exceptions": False}
        if self.resources.memory_gb:
            options["memory"] = int(self.resources.memory_gb * 2**30)
        return options

    def run(self, jobs: list[Job], on_start: Callable[[str], None]) -> Iterator[JobResult]:
        ray = self.ray
        remote = ray.remote(_ray_job).options(**self._task_options())
        for job in jobs:
            self.pending[remote.remote(job, str(self.scratch), self.env, self.board)] = job
        seen: set[str] = set()
        while self.pending:
            done, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0)
            for name in ray.get(self.board.started.remote()):
                if name not in seen:
                    seen.add(name)
                    on_start(name)
            for ref in done:
                job = self.pending.pop(ref)
                yield self._result(ref, job)

    def _result(self, ref, job: Job) -> JobResult:
        try:
            result = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # retries exhausted, or the task itself broke
            result = JobResult(job.name, False, f"Ray: {str(exc).splitlines()[0][:300]}")
        result.attempts = self.ray.get(self.board.attempts.remote(job.name)) or 1
        return result

    def running(self) -> int:
        return self.ray.get(self.board.running.remote())

    def cancel(self) -> None:
        """Cancel every unfinished task (each stops its stage with SIGTERM) and wait for them to end."""
        for ref in self.pending:
            self.ray.cancel(ref, force=False)
        self.ray.wait(list(self.pending), num_returns=len(self.pending), timeout=TERM_GRACE_S + 15)
        self.pending.clear()

    def shutdown(self) -> None:
        self.ray.shutdown()


def _ray_job(job: Job, scratch: str, env: dict[str, str], board) -> JobResult:
    """The Ray task: note the attempt on the board, run the job, mark it ended."""
    board.start.remote(job.name, socket.gethostname(), os.getpid())
    try:
        return run_job(job, scratch, env)
    finally:
        board.end.remote(job.name)


def _board_actor(ray):
    """An actor counting the tasks' attempts and which are running (for the driver's progress bar)."""

    class Board:
        def __init__(self):
            self.attempt_count: dict[str, int] = {}
            self.live: dict[str, tuple[str, int]] = {}

        def start(self, name: str, host: str, pid: int) -> None:
            self.attempt_count[name] = self.attempt_count.get(name, 0) + 1
            self.live[name] = (host, pid)

        def end(self, name: str) -> None:
            self.live.pop(name, None)

        def started(self) -> list[str]:
            return list(self.attempt_count)

        def running(self) -> int:
            return len(self.live)

        def attempts(self, name: str) -> int:
            return self.attempt_count.get(name, 0)

    return ray.remote(num_cpus=0)(Board)
