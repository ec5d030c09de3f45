"""Running jobs of pipeline stages away from the workspace: in this process (`local`) or as Ray tasks (`ray`).

A `Job` is one configuration's stages (their commands and outputs, as dvc.yaml declares them) plus the inputs
they read, packed by the driver into a tar archive (`pack`). `run_job` is what a worker does with it:
1. lock `<scratch>/<job>.lock` (a retry waits there until a previous attempt's commands have exited),
2. unpack the inputs into the working copy `<scratch>/<job>/`, keeping its `.sonotune/` (the resume store of
   finished folds: a retry on a node that sees the same scratch path resumes instead of starting over),
3. run the stage commands there in their own process group (the shipped `src/` first on PYTHONPATH, so the
   code that runs is the code DVC hashes), which dies with the worker (PR_SET_PDEATHSIG: SIGTERM, on which
   a stage marks its MLflow runs FAILED and keeps its finished folds),
4. return the stages' outputs packed as bytes, or one line saying why it failed.
The worker never touches the driver's workspace: the driver unpacks the outputs and records them (DVC).

Ray is imported only by `RayEngine` (the optional extra `sonotune[ray]`). Ray retries a task whose worker or
node died (`max_retries`); a job failing for its own reason returns a failed `JobResult` and is not retried.
"""

from __future__ import annotations

import fcntl
import io
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from sonotune.errors import SonotuneError

RESUME_FOLDER = ".sonotune"  # kept across attempts in the working copy (resume.RESUME_ROOT lives there)
TERM_GRACE_S = 60  # a stage given SIGTERM marks its runs FAILED within seconds; then it is killed
RAY_CONNECT_TIMEOUT_S = 10  # ray.init retries an address that refuses for many minutes: the preflight does not


@dataclass(frozen=True)
class StageRun:
    """One DVC stage as a worker runs it: its name, command and declared outputs (paths relative to the root)."""

    name: str
    cmd: str
    outs: tuple[str, ...]


@dataclass(frozen=True)
class Job:
    """A configuration's stages, run in order in one working copy."""

    name: str
    stages: tuple[StageRun, ...]
    inputs: tuple[str, ...]  # paths packed into the job's input archive

    @property
    def outs(self) -> list[str]:
        return [out for stage in self.stages for out in stage.outs]


@dataclass
class JobResult:
    name: str
    ok: bool
    line: str = ""  # why it failed, in one line
    host: str = ""
    seconds: float = 0.0
    outputs: bytes = b""  # tar of the job's outputs
    attempts: int = 1
    pid: int = 0


def pack(root: Path, paths: list[str] | tuple[str, ...]) -> bytes:
    """A tar (uncompressed: the prepared caches are already compressed arrays) of `paths` under `root`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in paths:
            if (root / path).exists():
                tar.add(root / path, arcname=path)
    return buffer.getvalue()


def unpack(data: bytes, dest: Path) -> list[str]:
    """Extract a `pack` archive into `dest`; the top-level paths it held."""
    dest.mkdir(parents=True, exist_ok=True)
    if not data:
        return []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")
        return sorted({member.name for member in tar.getmembers()})


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the worker that started it dies (Linux), own process group."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _argv(cmd: str) -> list[str]:
    """A plain command runs as itself, so that the signal on the worker's death reaches the stage (through a
    shell it would only reach the shell); a command using the shell's syntax runs through `sh -c`."""
    if any(char in cmd for char in "|&;<>()$`\\\"'*?[]#~=%{}\n"):
        return ["/bin/sh", "-c", cmd]
    return shlex.split(cmd)


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
    """The failed command's error line (sonotune prints one), else the last line it printed."""
    with log.open("rb") as stream:
        stream.seek(offset)
        text = stream.read().decode(errors="replace")
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1][-400:]


def _clean_copy(copy: Path) -> None:
    """Empty the working copy but its resume store (outputs of a killed attempt are not to be trusted)."""
    if not copy.exists():
        return
    for entry in copy.iterdir():
        if entry.name != RESUME_FOLDER:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def worker_env(copy: Path, env: dict[str, str]) -> dict[str, str]:
    """The stage commands' environment: the worker's, the driver's tracking settings, the shipped code first."""
    merged = dict(os.environ) | env
    merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(copy / "src"), os.environ.get("PYTHONPATH")]))
    merged["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), merged.get("PATH", "")])
    return merged


def run_job(job: Job, inputs: bytes, scratch: str, env: dict[str, str]) -> JobResult:
    """Run `job` in `<scratch>/<job.name>/` (see the module docstring); never raises for the job's own failure."""
    started = time.monotonic()
    scratch_dir = Path(scratch)
    scratch_dir.mkdir(parents=True, exist_ok=True)
    copy = scratch_dir / job.name
    host = socket.gethostname()
    with open(scratch_dir / f"{job.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held by the commands too (inherited): a killed worker's child first ends
        _clean_copy(copy)
        unpack(inputs, copy)
        log = copy / RESUME_FOLDER / "grid.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        for stage in job.stages:
            with log.open("a") as out:
                out.write(f"$ {stage.cmd}\n")
                out.flush()
                offset = out.tell()
                process = subprocess.Popen(_argv(stage.cmd), cwd=copy, env=worker_env(copy, env), stdout=out,
                                           stderr=subprocess.STDOUT, pass_fds=(lock.fileno(),),
                                           preexec_fn=_die_with_parent)
                try:
                    code = _wait(process)
                except BaseException:  # the task was cancelled (Ctrl-C on the driver): end the stage cleanly
                    _stop(process)
                    raise
            if code != 0:
                line = f"{stage.name} exited {code}: {_why(log, offset)} (log: {host}:{log})"
                return JobResult(job.name, False, line, host, time.monotonic() - started, pid=os.getpid())
        missing = [out for out in job.outs if not (copy / out).exists()]
        if missing:
            return JobResult(job.name, False, f"outputs not written: {', '.join(missing)}", host,
                             time.monotonic() - started, pid=os.getpid())
        outputs = pack(copy, job.outs)
    shutil.rmtree(copy, ignore_errors=True)
    return JobResult(job.name, True, "", host, time.monotonic() - started, outputs, pid=os.getpid())


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

    def run(self, jobs: list[tuple[Job, bytes]], on_start: Callable[[str], None]) -> Iterator[JobResult]:
        for job, inputs in jobs:
            on_start(job.name)
            yield run_job(job, inputs, str(self.scratch), self.env)

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

    def __init__(self, scratch: Path, env: dict[str, str], resources: Resources, local_cpus: int | None = None,
                 object_store_mb: int | None = None):
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
            if object_store_mb:
                options["object_store_memory"] = object_store_mb * 2**20
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

    def run(self, jobs: list[tuple[Job, bytes]], on_start: Callable[[str], None]) -> Iterator[JobResult]:
        ray = self.ray
        remote = ray.remote(_ray_job).options(**self._task_options())
        shared: dict[int, object] = {}
        for job, inputs in jobs:
            ref = shared.setdefault(id(inputs), ray.put(inputs))  # one copy per distinct input archive
            self.pending[remote.remote(job, ref, str(self.scratch), self.env, self.board)] = job
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


def _ray_job(job: Job, inputs: bytes, scratch: str, env: dict[str, str], board) -> JobResult:
    """The Ray task: note the attempt on the board, run the job, mark it ended."""
    board.start.remote(job.name, socket.gethostname(), os.getpid())
    try:
        return run_job(job, inputs, scratch, env)
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
