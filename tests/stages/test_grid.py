"""`sonotune grid`: the tiny study as Ray tasks on a real local Ray cluster (two workers), logging to a real MLflow
server, against a real `dvc repro` of the same study; one worker process is killed mid-task."""

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
STAGES = ("finetune@phantom-vgg16-0", "finetune@phantom-vgg16-15", "svm@phantom-vgg16-0", "svm@phantom-vgg16-15")
KILL_TIMEOUT_S = 600


def _lock_outs(repo: Path) -> dict[str, dict[str, str]]:
    """stage -> {out path: md5} of dvc.lock."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {stage: {o["path"]: o["md5"] for o in lock[stage]["outs"]} for stage in STAGES}


def _metrics(repo: Path, stage: str) -> dict:
    name = stage.split("@")[1].split("-")
    classifier = "mlp" if stage.startswith("finetune") else "svm"
    return json.loads((repo / f"runs/{name[0]}/{name[1]}/{name[2]}/{classifier}_metrics.json").read_text())


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
        if not cwd.startswith(str(scratch)) or "finetune" not in _proc(pid, "cmdline"):
            continue
        job = Path(cwd).relative_to(scratch).parts[0]
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
            killed.update(pid=pid, job=job, fold0_run=json.loads(record.read_text())["run_id"])
            os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.5)


def _open_parent_runs(scratch: Path) -> list[str]:
    """Parent runs the jobs' finetune stages have opened (their resume stores name them)."""
    states = [json.loads(p.read_text()) for p in scratch.glob("*/.sonotune/resume/*/*/*/*/state.json")]
    return [state["parent_run_id"] for state in states if state.get("parent_run_id")]


def _grid(repo: Path, scratch: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "sonotune"), "grid", "--engine", "ray", "--workers", "2", "--scratch", str(scratch),
         "--object-store-mb", "80"], cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _interrupt_once_a_run_is_open(repo: Path, scratch: Path, env: dict) -> dict:
    """Ctrl-C (SIGINT) to the driver once a job's finetune has opened its MLflow run; what it left."""
    grid = _grid(repo, scratch, env)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while not _open_parent_runs(scratch) and grid.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    grid.send_signal(signal.SIGINT)
    try:
        output, _ = grid.communicate(timeout=180)
    finally:
        if grid.poll() is None:
            grid.kill()
    return {"rc": grid.returncode, "output": output, "runs": _open_parent_runs(scratch)}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A tracking server, the tiny study through `dvc repro` (the reference) and through `sonotune grid --engine
    ray` with two workers, one of them killed after a finished fold. Timed."""
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

        repo, scratch = copy_repo(base / "grid", tiny_params()), base / "scratch"
        interrupted = _interrupt_once_a_run_is_open(repo, scratch, env)
        from mlflow import MlflowClient

        interrupted["statuses"] = [MlflowClient(uri).get_run(r).info.status for r in interrupted["runs"]]
        killed, stop = {}, threading.Event()
        killer = threading.Thread(target=_kill_a_worker_after_its_first_fold, args=(scratch, killed, stop))
        started = time.monotonic()
        grid = _grid(repo, scratch, env)
        killer.start()
        try:
            output, _ = grid.communicate(timeout=1200)
        finally:
            stop.set()
            if grid.poll() is None:
                grid.kill()
        killer.join()
        grid_seconds = time.monotonic() - started
        print(f"\ntiny grid: dvc repro {repro_seconds:.0f} s, sonotune grid --engine ray (2 workers, one killed, "
              f"after a Ctrl-C) {grid_seconds:.0f} s; killed {killed}", file=sys.stderr)
        print("\n".join(output.splitlines()[-4:]), file=sys.stderr)
        after = run(["dvc", "repro"], repo, env)
        yield {"uri": uri, "reference": reference, "repo": repo, "output": output, "rc": grid.returncode,
               "killed": killed, "repro_after": after.stdout,
               "interrupted": interrupted}


@needs_ray
@pytest.mark.e2e
def test_ctrl_c_cancels_the_jobs_and_leaves_no_run_running(study):
    interrupted = study["interrupted"]
    assert interrupted["rc"] == 128 + signal.SIGINT, interrupted["output"][-2000:]
    assert interrupted["output"].strip().splitlines()[-1].startswith("sonotune grid: error: interrupted by SIGINT")
    assert interrupted["runs"] and "RUNNING" not in interrupted["statuses"], interrupted["statuses"]


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


def _without_timings(node):
    """A metrics document without its wall-clock fields (`seconds` per fold): the rest is deterministic."""
    if isinstance(node, dict):
        return {k: _without_timings(v) for k, v in node.items() if k != "seconds"}
    if isinstance(node, list):
        return [_without_timings(v) for v in node]
    return node


@needs_ray
@pytest.mark.e2e
def test_dvc_lock_and_metrics_match_dvc_repro(study):
    """Same outputs, byte for byte (DVC's md5), as `dvc repro`; the MLP metrics differ only in fold timings."""
    grid, reference = _lock_outs(study["repo"]), _lock_outs(study["reference"])
    assert {s: sorted(o) for s, o in grid.items()} == {s: sorted(o) for s, o in reference.items()}
    timed = {out for outs in grid.values() for out in outs if out.endswith("mlp_metrics.json")}
    assert {s: {o: m for o, m in outs.items() if o not in timed} for s, outs in grid.items()} == \
        {s: {o: m for o, m in outs.items() if o not in timed} for s, outs in reference.items()}
    for stage in STAGES:
        assert _without_timings(_metrics(study["repo"], stage)) == _without_timings(_metrics(study["reference"], stage))


@needs_ray
@pytest.mark.e2e
def test_dvc_repro_afterwards_runs_nothing_and_no_run_is_left_running(study):
    from mlflow import MlflowClient

    assert "Running stage" not in study["repro_after"], study["repro_after"]
    assert "up to date" in run(["dvc", "status"], study["repo"]).stdout
    client = MlflowClient(study["uri"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'")
    assert running == [], [r.info.run_name for r in running]


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
