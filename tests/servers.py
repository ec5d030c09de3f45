"""Real servers for tests: `sonotune server` (an `mlflow server`) on a free 127.0.0.1 port, and DVC's queue.

`mlflow_server(store)` starts the server in its own process group and, whatever happens, stops the whole group
(SIGTERM, then SIGKILL) and checks that no process of it is left. `wait_for_queue(repo)` polls
`dvc queue status` until no experiment is queued or running and no worker is alive.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

from tests.workspace import BIN, project_env, run

STARTUP_TIMEOUT_S = 180  # healthy in 6–12 s on an idle machine; much slower on a loaded CI runner


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def live_pids_in_group(pgid: int) -> list[int]:
    """Processes of group `pgid` that are not zombies."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state != "Z":
            alive.append(int(stat.parent.name))
    return alive


def _stop_group(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while live_pids_in_group(process.pid) and time.monotonic() < deadline:
            process.poll()
            time.sleep(0.2)
        if not live_pids_in_group(process.pid):
            break
    process.wait(timeout=10)
    left = live_pids_in_group(process.pid)
    assert not left, f"mlflow server processes left behind: {left}"


def wait_healthy(uri: str, process: subprocess.Popen, log: Path, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


@contextmanager
def mlflow_server(store: Path, port: int | None = None, extra: list[str] = (), env: dict | None = None
                  ) -> Iterator[str]:
    """`sonotune server --store STORE --port PORT` until the block ends; yields its http URI."""
    port = port or free_port()
    uri = f"http://127.0.0.1:{port}"
    store.mkdir(parents=True, exist_ok=True)
    log = store / "server.log"
    command = [str(BIN / "sonotune"), "server", "--store", str(store), "--port", str(port), *extra]
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env or project_env(),
                                   start_new_session=True)
    try:
        wait_healthy(uri, process, log)
        yield uri
    finally:
        _stop_group(process)


def queue_status(repo: Path, env: dict) -> str:
    return run(["dvc", "queue", "status"], repo, env).stdout


def wait_for_queue(repo: Path, env: dict, timeout: float = 1800) -> str:
    """Poll until every queued experiment has ended and DVC's temporary workers have exited (~10 s idle)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = queue_status(repo, env)
        busy = any(word in status for word in (" Queued", " Running"))
        if not busy and "0 active, 0 idle" in status:
            return status
        time.sleep(3)
    run(["dvc", "queue", "stop", "--kill"], repo, env, check=False)
    raise AssertionError(f"DVC queue not done after {timeout} s:\n{queue_status(repo, env)}")
