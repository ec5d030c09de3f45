"""`sonotune grid`: the tiny study on a real local Ray cluster (two workers) with a local-directory DVC remote and a
real MLflow server, against a real `dvc repro` of the same study. One worker is killed after a finished fold; a
second grid, in a clone of the workspace on the same remote, starts while the first runs."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from tests.servers import is_alive, mlflow_server
from tests.workspace import BIN, ROOT, copy_repo, project_env, run, tiny_params

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed: pip install 'sonotune[ray]'")
CONFIGURATIONS = ("phantom-vgg16-0", "phantom-vgg16-15")
STAGES = tuple(f"{stage}@{c}" for c in CONFIGURATIONS for stage in ("finetune", "svm"))
KILL_TIMEOUT_S = 600


def _lock_outs(repo: Path) -> dict[str, dict[str, str]]:
    """stage -> {out path: md5} of dvc.lock, for the grid's stages."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {stage: {o["path"]: o["md5"] for o in lock[stage]["outs"]} for stage in STAGES}


def _proc(pid: int, entry: str) -> str:
    try:
        if entry == "cwd":
            return os.readlink(f"/proc/{pid}/cwd")
        return Path(f"/proc/{pid}/{entry}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _ray_worker_running_finetune(scratch: Path) -> tuple[int, str] | None:
    """(pid of the Ray worker process, job name) of a task whose `sonotune finetune` has finished a fold."""
    for stat in Path("/proc").glob("[0-9]*"):
        pid = int(stat.name)
        cwd = _proc(pid, "cwd")
        if not cwd.startswith(str(scratch)) or "sonotune finetune" not in _proc(pid, "cmdline"):  # not dvc
            continue
        job = Path(cwd).relative_to(scratch).parts[0]  # <commit>-<configuration>
        if not list((scratch / job / ".sonotune" / "resume").rglob("fold_0.json")):
            continue
        parent = _ppid(pid)
        while parent > 1 and not _proc(parent, "cmdline").startswith("ray::"):
            parent = _ppid(parent)
        if parent > 1:
            return parent, job
    return None


def _kill_a_worker_after_its_first_fold(scratch: Path, killed: dict, stop: threading.Event) -> None:
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not stop.is_set() and time.monotonic() < deadline:
        found = _ray_worker_running_finetune(scratch)
        if found:
            pid, job = found
            record = next((scratch / job / ".sonotune" / "resume").rglob("fold_0.json"))
            killed.update(pid=pid, job=job.split("-", 1)[1], fold0_run=json.loads(record.read_text())["run_id"])
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.5)


def _grid(repo: Path, scratch: Path, env: dict, engine: str = "ray") -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "sonotune"), "grid", "--engine", engine, "--workers", "2", "--scratch", str(scratch)],
        cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _with_remote(repo: Path, remote: Path, env: dict) -> Path:
    run(["dvc", "remote", "add", "--local", "--default", "team", str(remote)], repo, env)
    return repo


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tracking server, the tiny study through `dvc repro` (the reference) and through `sonotune grid --engine
    ray` with two workers, one of them killed after a finished fold, while a second grid runs in a clone. Timed."""
    if not HAS_RAY:
        pytest.skip("Ray is not installed: pip install 'sonotune[ray]'")
    base = tmp_path_factory.mktemp("grid")
    with mlflow_server(base / "mlflow") as uri:
        env = project_env(MLFLOW_TRACKING_URI=uri, RAY_ADDRESS="")
        env.pop("RAY_ADDRESS")
        reference = copy_repo(base / "reference", tiny_params())
        run(["dvc", "repro", "prepare"], reference, env)
        started = time.monotonic()
        run(["dvc", "repro"], reference, env)
        repro_seconds = time.monotonic() - started

        remote = base / "remote"
        repo = _with_remote(copy_repo(base / "grid", tiny_params()), remote, env)
        run(["dvc", "push", "-q"], repo, env)  # the data on the team's remote, as `make data` leaves it
        clone = base / "clone"
        run(["git", "clone", "-q", str(repo), str(clone)], base, env)
        _with_remote(clone, remote, env)
        run(["dvc", "pull", "-q", "data.dvc"], clone, env)
        scratch = base / "scratch"
        killed, stop = {}, threading.Event()
        killer = threading.Thread(target=_kill_a_worker_after_its_first_fold, args=(scratch, killed, stop))
        started = time.monotonic()
        first = _grid(repo, scratch, env)
        claims = remote / "sonotune-claims"
        while len(list(claims.rglob("*.json"))) < len(CONFIGURATIONS) and first.poll() is None:
            time.sleep(0.5)
        second = _grid(clone, base / "scratch-clone", env, engine="local")
        killer.start()
        try:
            output, _ = first.communicate(timeout=1200)
            second_output, _ = second.communicate(timeout=600)
        finally:
            stop.set()
            for grid in (first, second):
                if grid.poll() is None:
                    grid.kill()
        killer.join()
        grid_seconds = time.monotonic() - started
        print(f"\ntiny grid: dvc repro {repro_seconds:.0f} s, sonotune grid --engine ray (2 workers, one killed) "
              f"{grid_seconds:.0f} s; killed {killed}", file=sys.stderr)
        print("\n".join(output.splitlines()[-4:]), file=sys.stderr)
        yield {"uri": uri, "reference": reference, "repo": repo, "clone": clone, "output": output,
               "rc": first.returncode, "second": second_output, "second_rc": second.returncode, "killed": killed,
               "commit": run(["git", "rev-parse", "HEAD"], repo).stdout.strip(),
               "reference_commit": run(["git", "rev-parse", "HEAD"], reference).stdout.strip()}


@needs_ray
@pytest.mark.e2e
def test_the_grid_completes_though_a_worker_is_killed(study):
    assert study["rc"] == 0, study["output"][-3000:]
    killed = study["killed"]
    assert killed, f"no Ray worker was found running finetune with a finished fold:\n{study['output'][-2000:]}"
    assert not is_alive(killed["pid"])
    row = next(line for line in study["output"].splitlines() if line.startswith(killed["job"] + " "))
    assert row.split()[1:2] == ["done"] and int(row.split()[3]) >= 2, row  # retried elsewhere


@needs_ray
@pytest.mark.e2e
def test_the_retried_task_resumed_from_its_finished_fold(study):
    """The fold finished before the kill is not retrained: the final parent run's fold 0 is the same run."""
    from mlflow import MlflowClient

    killed = study["killed"]
    client = MlflowClient(study["uri"])
    fold0 = client.get_run(killed["fold0_run"])
    assert fold0.info.status == "FINISHED"
    parent = client.get_run(fold0.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED"
    strategy = killed["job"].rsplit("-", 1)[1]
    assert parent.data.tags["strategy"] == strategy and parent.data.tags["classifier"] == "mlp"


@needs_ray
@pytest.mark.e2e
def test_the_driver_restores_from_the_run_cache_and_computes_nothing(study):
    for output in (study["output"], study["second"]):
        for stage in STAGES:
            assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in output, output[-3000:]
        assert "Running stage 'finetune" not in output and "Running stage 'svm" not in output, output[-3000:]


@needs_ray
@pytest.mark.e2e
def test_dvc_lock_matches_dvc_repro_byte_for_byte(study):
    """Same outputs (DVC's md5 of every file, metrics included: no wall-clock field in them) as `dvc repro`."""
    assert _lock_outs(study["repo"]) == _lock_outs(study["reference"])
    assert "up to date" in run(["dvc", "status"], study["repo"]).stdout


@needs_ray
@pytest.mark.e2e
def test_a_second_grid_leaves_the_claimed_work_to_the_first_and_restores_it(study):
    """Started in a clone while the first grid's claims were live: it computes nothing, waits, restores."""
    assert study["second_rc"] == 0, study["second"][-3000:]
    rows = [line.split() for line in study["second"].splitlines() if line.startswith(CONFIGURATIONS)]
    assert sorted(row[0] for row in rows) == sorted(CONFIGURATIONS)
    assert all(row[1:4] == ["done", "(another", "grid)"] for row in rows), rows
    assert _lock_outs(study["clone"]) == _lock_outs(study["repo"])
    assert "up to date" in run(["dvc", "status"], study["clone"]).stdout


@needs_ray
@pytest.mark.e2e
def test_every_run_carries_its_commit_none_is_left_running_and_no_work_was_done_twice(study):
    from mlflow import MlflowClient

    client = MlflowClient(study["uri"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    commits = {run.data.tags.get("git_commit") for run in runs}
    assert commits <= {study["commit"], study["reference_commit"]}, commits  # real checkouts, never `unknown`
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    parents = client.search_runs(experiments, f"tags.git_commit = '{study['commit']}' and tags.fold = 'all' and "
                                              "attributes.status = 'FINISHED'")
    configurations = sorted((p.data.tags["strategy"], p.data.tags["classifier"]) for p in parents)
    assert configurations == sorted((s, c) for s in ("0", "15") for c in ("mlp", "svm"))  # one each: not twice


def test_the_grid_refuses_to_run_without_a_tracking_server(tmp_path):
    """One line naming MLFLOW_TRACKING_URI, status 2, and Ray never imported (it is optional)."""
    script = ("import sys; from sonotune.cli import main; rc = main(['grid', '--engine', 'local', '--params', "
              f"{str(ROOT / 'params.yaml')!r}]); print('ray imported' if 'ray' in sys.modules else 'no ray'); "
              "sys.exit(rc)")
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=project_env(), capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("sonotune grid: error: MLFLOW_TRACKING_URI is ")
    assert result.stdout.strip() == "no ray"
