"""grid_engine and the grid's bookkeeping on a toy DVC project (real git, real DVC, a local-directory remote): a job
computes in a clone and pushes; the driver restores without running; a failure is one line; DVC's lock (claims: tests/test_claims.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sonotune.errors import SonotuneError
from sonotune.grid_engine import RESUME_FOLDER, Job, LocalEngine, run_job
from sonotune.stages import grid
from tests.servers import is_alive
from tests.workspace import project_env, run

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
DVC_YAML = """stages:
  double:
    cmd: mkdir -p out && echo $(( $(cat x.txt) * 2 )) > out/y.txt && echo ran >> $TOY_RUNS_LOG
    deps: [x.txt]
    outs: [out]
  resumed:
    cmd: test -e .sonotune/fold_0.json && test ! -e half.txt && echo resumed > resumed.txt
    deps: [x.txt]
    outs: [resumed.txt]
  slow:
    cmd: sleep 300
    deps: [x.txt]
    outs: [never-written]
  broken:
    cmd: "echo 'sonotune svm: error: features.npz is missing' >&2; exit 2"
    outs: [never]
"""


@pytest.fixture
def toy(tmp_path) -> tuple[Path, str, str]:
    """(a committed DVC project, its commit, an empty local-directory remote)."""
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    remote.mkdir()
    (repo / "x.txt").write_text("21\n")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "remote", "add", "--local", "--default", "team", str(remote)], repo)
    run(GIT + ["add", "-A"], repo)
    run(GIT + ["commit", "-qm", "toy"], repo)
    return repo, run(["git", "rev-parse", "HEAD"], repo).stdout.strip(), str(remote)


def test_a_job_computes_in_a_clone_and_the_driver_restores_without_running(toy, tmp_path):
    """`sonotune grid-job`, as SLURM would run it, on the team's remote (without a remote, the workspace's own DVC
    cache serves as one: tests/test_faults.py's grid on a Ray of its own runs that way)."""
    repo, commit, remote = toy
    env = project_env(TOY_RUNS_LOG=str(tmp_path / "runs.log"))  # each run of the stage adds a line
    out = run(["sonotune", "grid-job", "--origin", str(repo), "--commit", commit, "--remote", remote, "--name",
               "double", "--stage", "double", "--scratch", str(tmp_path / "scratch")], tmp_path, env).stdout
    assert out.strip().startswith("double: done in ") and out.strip().endswith(f"pushed to {remote}")
    assert (tmp_path / "runs.log").read_text().count("ran") == 1
    assert not (tmp_path / "scratch" / f"{commit[:12]}-double").exists()  # the clone is removed once pushed
    assert not (repo / "out").exists()  # the worker never touches the driver's workspace
    grid.restore(repo, remote, ["double"], lock_wait_s=0)
    assert (repo / "out" / "y.txt").read_text() == "42\n"
    assert (tmp_path / "runs.log").read_text().count("ran") == 1  # restored from the run cache, not rerun
    assert "double" in (repo / "dvc.lock").read_text()
    assert "double" not in run(["dvc", "status", "double"], repo).stdout  # dvc.lock as `dvc repro` writes it


def test_a_failing_stage_is_one_line_and_the_next_job_still_runs(toy, tmp_path):
    repo, commit, remote = toy
    jobs = [Job("bad", ("broken",), commit, str(repo), remote), Job("good", ("double",), commit, str(repo), remote)]
    started = []
    env = project_env(TOY_RUNS_LOG=str(tmp_path / "runs.log"))
    results = list(LocalEngine(tmp_path / "scratch", env).run(jobs, started.append))
    assert started == ["bad", "good"] and [r.ok for r in results] == [False, True]
    line = results[0].line
    assert line.startswith("`dvc repro --pull …` exited 255: sonotune svm: error: features.npz is missing (log: "), \
        line
    assert "\n" not in line
    assert line.endswith(f"{tmp_path / 'scratch' / (commit[:12] + '-bad') / RESUME_FOLDER / 'grid.log'})")


def test_a_retry_keeps_the_resume_store_and_cleans_the_rest(toy, tmp_path):
    """What a failed or killed attempt left in its clone: the finished folds are kept, half-written files are not."""
    repo, commit, remote = toy
    scratch = tmp_path / "scratch"
    assert not run_job(Job("resumed", ("broken",), commit, str(repo), remote), str(scratch), project_env()).ok
    copy = scratch / f"{commit[:12]}-resumed"  # left behind, as a killed worker leaves it
    (copy / RESUME_FOLDER / "fold_0.json").write_text("{}")
    (copy / "half.txt").write_text("half-written by the failed attempt")
    result = run_job(Job("resumed", ("resumed",), commit, str(repo), remote), str(scratch), project_env())
    assert result.ok, result.line
    grid.restore(repo, remote, ["resumed"], lock_wait_s=0)
    assert (repo / "resumed.txt").read_text() == "resumed\n"


def test_a_dvc_lock_held_by_another_command_waits_then_says_so_in_one_line(toy):
    repo, _, _ = toy
    holder = subprocess.Popen([sys.executable, "-c", "import time, zc.lockfile; "
                               "lock = zc.lockfile.LockFile('.dvc/tmp/lock'); print('held', flush=True); "
                               "time.sleep(60)"], cwd=repo, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(SonotuneError) as error:
            grid.dvc(["status"], repo, lock_wait_s=1)
        assert time.monotonic() - started >= 1
        assert str(error.value).startswith("`dvc status`: another DVC command holds this workspace's lock")
        assert "\n" not in str(error.value)
    finally:
        holder.kill()
        holder.wait()
    grid.dvc(["status"], repo, lock_wait_s=1)  # free again: runs


def test_uncommitted_changes_are_refused_in_one_line(toy):
    repo, commit, _ = toy
    assert grid.require_committed(repo) == commit
    (repo / "dvc.lock").write_text("schema: '2.0'\n")  # results are not inputs: allowed
    run(GIT + ["add", "dvc.lock"], repo)
    run(GIT + ["commit", "-qm", "lock"], repo)
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    grid.require_committed(repo)
    (repo / "x.txt").write_text("7\n")
    with pytest.raises(SonotuneError, match=r"^uncommitted changes in x.txt: grid workers check out commit "):
        grid.require_committed(repo)


def _pids_running(command: str, folder: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if cmdline == command and os.readlink(entry / "cwd").startswith(str(folder)):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_the_stage_under_dvc_ends_when_its_worker_is_killed(toy, tmp_path):
    """SIGKILL to the worker (a Python process running `run_job`) reaches the stage command DVC started."""
    repo, commit, remote = toy
    scratch = tmp_path / "scratch"
    script = ("from sonotune.grid_engine import Job, run_job; "
              f"run_job(Job('slow', ('slow',), {commit!r}, {str(repo)!r}, {remote!r}), {str(scratch)!r}, {{}})")
    worker = subprocess.Popen([sys.executable, "-c", script], env=project_env())
    deadline = time.monotonic() + 120
    while not _pids_running("sleep 300", scratch) and time.monotonic() < deadline:
        time.sleep(0.2)
    stage = _pids_running("sleep 300", scratch)
    assert stage, "the stage command never started"
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 15
    while any(is_alive(p) for p in stage) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(is_alive(p) for p in stage)
