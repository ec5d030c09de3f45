"""Working as a team, with real servers: a tracking server that is down stops a stage fast and a rerun resumes
once it is back; a DVC remote carries a study to a second clone; DVC's queue runs the grid on two workers that
log to one `mlflow server`, every run tagged with its experiment's name."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from sonotune import team
from tests.workspace import BIN, copy_repo, project_env, run, tiny_params
from tests.servers import free_port, is_alive, mlflow_server, wait_for_queue

TINY = {"finetune.epochs": 1, "cv.n_splits": 2, "svm.inner_splits": 2}
STAGE = ["--dataset", "phantom", "--backbone", "vgg16", "--strategy", "0"]
GIT = ["git", "-c", "user.name=sonotune-tests", "-c", "user.email=tests@localhost"]


def _sonotune(args: list[str], cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = run([str(BIN / "sonotune"), *args], cwd, env, check=False)
    return result, time.monotonic() - start


def _server_runs(uri: str, experiment: str = "sonotune-phantom"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} on {uri}"
    return client.search_runs([found.experiment_id], max_results=1000), found


def _listening_hosts(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on `port`, from /proc/net/tcp{,6}."""
    hosts = set()
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                hosts.add(socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, packed))
    return hosts


# --- fast: the preflight of every stage that logs ---------------------------------------------------------

@pytest.fixture
def silent_port():
    """A port that accepts TCP connections but never answers: a hung server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("stage", ["finetune", "svm"])
@pytest.mark.parametrize("case", ["refused", "hung", "credentials"])
def test_stage_fails_fast_naming_an_unreachable_server(tmp_path, stage, case, request):
    port = request.getfixturevalue("silent_port") if case == "hung" else free_port()
    userinfo = "alice:s3cret@" if case == "credentials" else ""
    uri = f"http://{userinfo}127.0.0.1:{port}"
    # no params.yaml here: the check runs before anything is read, loaded or trained
    result, seconds = _sonotune([stage, *STAGE], tmp_path, project_env(MLFLOW_TRACKING_URI=uri))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"sonotune {stage}: error: MLflow tracking server" in lines[0]
    assert team.redact(uri) in lines[0] and "unreachable" in lines[0]
    assert "s3cret" not in result.stderr + result.stdout
    assert seconds < 10, f"took {seconds:.1f} s"
    assert not (tmp_path / "mlruns").exists()


def test_queued_copy_without_a_server_is_refused(tmp_path):
    main, copy = tmp_path / "main", tmp_path / "copy"
    main.mkdir(), copy.mkdir()
    refused, _ = _sonotune(["finetune", *STAGE], copy, project_env(DVC_ROOT=str(main)))
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "temporary copy" in refused.stderr
    # in the workspace itself (DVC_ROOT is the cwd) the local store is fine: it gets past the check
    allowed, _ = _sonotune(["finetune", *STAGE], main, project_env(DVC_ROOT=str(main)))
    assert "temporary copy" not in allowed.stderr and "params.yaml" in allowed.stderr


def test_queue_needs_a_tracking_server(tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    result, _ = _sonotune(["queue"], tmp_path, project_env())
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "not a tracking server" in result.stderr and "sqlite:///" in result.stderr


def test_server_command_defaults_to_loopback_and_proxied_artifacts(tmp_path):
    command = team.server_command(tmp_path / "store")
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{(tmp_path / 'store').resolve()}/mlflow.db"
    assert command[command.index("--artifacts-destination") + 1] == str((tmp_path / "store" / "artifacts").resolve())
    assert "--app-name" not in command
    assert team.server_command(tmp_path, basic_auth=True)[-2:] == ["--app-name", "basic-auth"]


def test_basic_auth_server_keeps_anonymous_clients_out(tmp_path):
    store, secret = tmp_path / "server", "correct-horse-battery"
    with mlflow_server(store, extra=["--basic-auth"], env=project_env(MLFLOW_AUTH_ADMIN_PASSWORD=secret)) as uri:
        team.check_tracking_server(uri)  # /health stays public: the stages' preflight works behind auth
        create = f"{uri}/api/2.0/mlflow/experiments/create"
        assert requests.post(create, json={"name": "anonymous"}, timeout=30).status_code == 401
        assert requests.post(create, json={"name": "team"}, auth=("admin", "wrong"), timeout=30).status_code == 401
        assert requests.post(create, json={"name": "team"}, auth=("admin", secret), timeout=30).status_code == 200
    assert (store / "basic_auth.db").exists()  # the user database lives with the server's store
    assert secret not in (store / "server.log").read_text() + (store / "basic_auth.ini").read_text()


def test_basic_auth_first_start_needs_the_admin_password(tmp_path):
    env = project_env()
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    result, _ = _sonotune(["server", "--store", str(tmp_path), "--basic-auth"], tmp_path, env)
    assert result.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in result.stderr


# --- end to end: real dvc repro / dvc exp queue against real mlflow servers ---------------------------------

@pytest.mark.e2e
def test_rerun_resumes_once_the_server_is_back(tmp_path):
    repo = copy_repo(tmp_path / "repo", tiny_params(**TINY, **{"study.strategies": [0]}))
    port = free_port()
    env = project_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}")

    down = run(["dvc", "repro"], repo, env, check=False)
    assert down.returncode != 0
    # pretrain is the first stage that tracks runs
    assert f"sonotune pretrain: error: MLflow tracking server http://127.0.0.1:{port} is unreachable" in down.stderr
    assert not (repo / "mlruns" / "mlflow.db").exists()  # no silent fallback to a local store

    store = tmp_path / "server"
    with mlflow_server(store, port=port) as uri:
        assert _listening_hosts(port) == {"127.0.0.1"}
        again = run(["dvc", "repro"], repo, env).stdout
        assert "Running stage 'prepare@phantom'" not in again  # done before the outage, kept
        assert "Running stage 'pretrain@vgg16'" in again and "Running stage 'finetune@phantom-vgg16-0'" in again
        runs, experiment = _server_runs(uri)
    assert {r.info.status for r in runs} == {"FINISHED"}
    parents = [r for r in runs if r.data.tags["fold"] == "all"]
    assert sorted(r.data.tags["classifier"] for r in parents) == ["mlp", "svm"]
    assert len(runs) == 2 + 2 * 2  # a parent and two folds per classifier: nothing half-logged from the outage
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server...
    assert any((store / "artifacts").rglob("roc.png"))  # ...into its --artifacts-destination
    assert not (repo / "mlruns" / "mlflow.db").exists()


@pytest.mark.e2e
def test_remote_carries_the_study_to_a_second_clone(tmp_path):
    first = copy_repo(tmp_path / "first", tiny_params(**TINY, **{"study.strategies": [0]}))
    remote = tmp_path / "remote"
    run(["dvc", "repro"], first)
    run(["dvc", "remote", "add", "--default", "team", str(remote)], first)
    run(GIT + ["add", "-A"], first)
    run(GIT + ["commit", "-qm", "study results"], first)
    run(["dvc", "push"], first)
    assert any(remote.rglob("*")), "nothing pushed"

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    assert not (second / "runs").exists()
    run(["dvc", "pull"], second)  # data.dvc's data/phantom (prepare's input) and the pipeline's outputs
    oof = "runs/phantom/vgg16/0/mlp/oof.csv"
    assert (second / oof).read_bytes() == (first / oof).read_bytes()
    repro = run(["dvc", "repro"], second).stdout
    assert "Running stage" not in repro, repro
    assert "Data and pipelines are up to date" in run(["dvc", "status", "dvc.yaml"], second).stdout


def _worker_pids(repo: Path) -> list[int]:
    return [int(p.read_text()) for p in (repo / ".dvc" / "tmp" / "exps").rglob("*.pid") if p.read_text().strip()]


@pytest.mark.e2e
def test_queue_runs_the_grid_on_two_workers_into_one_server(tmp_path):
    strategies = [0, 15]
    repo = copy_repo(tmp_path / "repo", tiny_params(**TINY, **{"study.strategies": strategies}))
    with mlflow_server(tmp_path / "server") as uri:
        env = project_env(MLFLOW_TRACKING_URI=uri)
        try:
            queued = run([str(BIN / "sonotune"), "queue", "--jobs", "2"], repo, env).stdout
            assert "Queued experiment 'phantom-vgg16-0'" in queued + run(["dvc", "queue", "status"], repo, env).stdout
            status = wait_for_queue(repo, env)
            logs = {s: run(["dvc", "queue", "logs", f"phantom-vgg16-{s}"], repo, env, check=False).stdout[-3000:]
                    for s in strategies} if "Failed" in status else {}
        finally:
            run(["dvc", "queue", "stop", "--kill"], repo, env, check=False)
        runs, _ = _server_runs(uri)

    for strategy in strategies:
        assert f"phantom-vgg16-{strategy}" in status and "Failed" not in status, f"{status}\n{logs}"
    assert {r.info.status for r in runs} == {"FINISHED"}
    by_experiment: dict[str, list] = {}
    for r in runs:
        by_experiment.setdefault(r.data.tags["dvc_exp"], []).append(r)
    assert set(by_experiment) == {f"phantom-vgg16-{s}" for s in strategies}
    for name, logged in by_experiment.items():
        strategy = name.rsplit("-", 1)[1]
        assert {r.data.tags["strategy"] for r in logged} == {strategy}
        assert sorted((r.data.tags["classifier"], r.data.tags["fold"]) for r in logged) == [
            ("mlp", "0"), ("mlp", "1"), ("mlp", "all"), ("svm", "0"), ("svm", "1"), ("svm", "all")]
    shown = run(["dvc", "exp", "show", "--json"], repo, env).stdout
    assert all(f"phantom-vgg16-{s}" in shown for s in strategies)
    workers = _worker_pids(repo)
    assert workers and not [pid for pid in workers if is_alive(pid)], "DVC queue workers left behind"
