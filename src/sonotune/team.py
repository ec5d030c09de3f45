"""Working as a team: a shared MLflow tracking server (what `sonotune server` runs, and the preflight check).

Thin over MLflow's own tools (README "Working as a team"):
- `check_tracking(uri)` runs first in every stage that logs (`sonotune finetune`, `sonotune svm`): a
  tracking server that does not answer `GET <uri>/health` within a few seconds stops the stage with one line
  naming the URI, before any data is loaded or model trained, so no half-logged run is left behind. A queued
  DVC experiment (it runs in a temporary copy of the repo) without a tracking server is refused too: its
  `mlruns/` would be deleted with the copy.
- `server_command(...)` is what `sonotune server` runs: `mlflow server` on 127.0.0.1 (unless told otherwise),
  SQLite (or any SQLAlchemy URL) for runs, artifacts proxied by the server from `--artifacts-destination`.
- `require_server_for_queue(uri)`: `sonotune queue` (stages/queue.py) refuses to queue without a server.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from sonotune.errors import ConfigError, SonotuneError

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 5000
HEALTH_TIMEOUT_S = 2.0  # per connect and per read: an unreachable server fails a stage within ~4 s
SERVER_SCHEMES = ("http", "https")


class TrackingUnavailable(SonotuneError):
    """The tracking server named by MLFLOW_TRACKING_URI cannot take runs now."""


def redact(uri: str) -> str:
    """The URI without a password (`http://user:secret@host` → `http://user:***@host`), fit for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_server(uri: str) -> bool:
    return urlsplit(uri).scheme in SERVER_SCHEMES


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, in a few words (`Connection refused`, `timed out`)."""
    import requests

    if isinstance(exc, requests.Timeout):
        return f"no answer within {HEALTH_TIMEOUT_S:g} s"
    while exc.__cause__ or exc.__context__:
        exc = exc.__cause__ or exc.__context__
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def check_tracking_server(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise TrackingUnavailable unless the MLflow server at `uri` answers `/health` with 200 in time."""
    import requests

    try:
        response = requests.get(f"{uri.rstrip('/')}/health", timeout=(timeout, timeout))
    except requests.RequestException as exc:
        raise TrackingUnavailable(
            f"MLflow tracking server {redact(uri)} is unreachable ({_reason(exc)}): start it "
            f"(`sonotune server`) or point MLFLOW_TRACKING_URI elsewhere, then rerun"
        ) from None
    if response.status_code != 200:
        raise TrackingUnavailable(
            f"MLflow tracking server {redact(uri)} answered HTTP {response.status_code} on /health: "
            f"is it an MLflow server?"
        )


def require_free_port(host: str, port: int) -> None:
    """Refuse to start a server on an address another process listens on (MLflow would print its banner,
    fail to bind and still exit 0)."""
    import socket

    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise SonotuneError(f"--host {host}: not an address of this machine ({getattr(exc, 'strerror', exc)}): "
                            f"pass 127.0.0.1, 0.0.0.0 or one of this machine's names") from None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: TIME_WAIT is no conflict
        try:
            probe.bind((host, port))
        except OSError as exc:
            import errno

            hint = ("another server is using the port? pass --port" if exc.errno == errno.EADDRINUSE
                    else "is the --host an address of this machine? (127.0.0.1, 0.0.0.0)")
            raise SonotuneError(f"{host}:{port}: cannot listen there ({exc.strerror or exc}): {hint}") from None


def in_queued_copy() -> bool:
    """True inside a `dvc exp run --queue` experiment: DVC runs it in a temporary copy, not in DVC_ROOT."""
    root = os.environ.get("DVC_ROOT")
    if not root:
        return False
    root, cwd = Path(root).resolve(), Path.cwd().resolve()
    return not cwd.is_relative_to(root) or cwd.is_relative_to(root / ".dvc")  # copies live in .dvc/tmp/exps


def check_tracking(uri: str) -> None:
    """Preflight of a stage that logs to MLflow: a server must answer; a queued run needs a server."""
    if is_server(uri):
        check_tracking_server(uri)
    elif in_queued_copy() and not os.environ.get("MLFLOW_TRACKING_URI"):
        raise TrackingUnavailable(
            "this queued DVC experiment runs in a temporary copy of the repo, whose mlruns/ is deleted "
            "afterwards: set MLFLOW_TRACKING_URI to a tracking server (`sonotune server`) before "
            "`dvc queue start`"
        )


def server_command(
    store: Path,
    host: str = LOOPBACK,
    port: int = DEFAULT_PORT,
    backend_uri: str | None = None,
    artifacts: str | None = None,
    workers: int = 1,
    basic_auth: bool = False,
    allowed_hosts: str | None = None,
) -> list[str]:
    """The `mlflow server` command line: runs in `backend_uri` (default SQLite `store/mlflow.db`), artifacts
    proxied to `artifacts` (default `store/artifacts`), listening on host:port."""
    store = store.resolve()
    command = [
        "mlflow", "server",
        "--backend-store-uri", backend_uri or f"sqlite:///{store / 'mlflow.db'}",
        "--artifacts-destination", artifacts or str(store / "artifacts"),
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]
    if basic_auth:
        command += ["--app-name", "basic-auth"]
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    return command


def write_auth_config(store: Path) -> Path:
    """An MLflow basic-auth config keeping its user database in `store` (MLflow's default is the server's cwd).

    No password in it: MLflow creates the admin user on first start from MLFLOW_AUTH_ADMIN_PASSWORD."""
    store = store.resolve()
    path = store / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{store / 'basic_auth.db'}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return path


def server_environment(store: Path, basic_auth: bool) -> dict[str, str]:
    """Environment for `mlflow server`: its job runner off and, with basic auth, the config kept in `store`."""
    # MLflow's job runner (GenAI evaluation jobs) adds seven worker processes the study never uses
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    store.mkdir(parents=True, exist_ok=True)
    if not basic_auth or "MLFLOW_AUTH_CONFIG_PATH" in os.environ:
        return env
    if not (store / "basic_auth.db").exists() and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise ConfigError("--basic-auth: the first start creates the user `admin` with the password in "
                          "MLFLOW_AUTH_ADMIN_PASSWORD; set it in the environment (not on the command line)")
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(store))
    # signs the UI's CSRF tokens; several servers behind one address must share one (set it yourself)
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)
    return env


def require_server_for_queue(uri: str) -> None:
    """Queued experiments must all log to one tracking server (see `check_tracking`)."""
    if not is_server(uri):
        raise ConfigError(
            f"MLFLOW_TRACKING_URI is {redact(uri)}, not a tracking server: queued experiments run in temporary "
            f"copies of the repo and would log into copies that are deleted. Start one (`sonotune server`) and "
            f"export MLFLOW_TRACKING_URI=http://{LOOPBACK}:{DEFAULT_PORT}"
        )
    check_tracking_server(uri)
