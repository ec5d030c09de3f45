"""grid_engine: a job's commands run in a scratch copy of its shipped inputs, with real shell commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from sonotune.grid_engine import RESUME_FOLDER, Job, LocalEngine, StageRun, pack, run_job, unpack
from tests.servers import is_alive
from tests.workspace import ROOT

SRC = ROOT / "src"


def _inputs(tmp_path: Path) -> bytes:
    source = tmp_path / "workspace"
    (source / "data").mkdir(parents=True)
    (source / "data" / "x.txt").write_text("42\n")
    return pack(source, ["data", "missing-is-skipped"])


def test_a_job_runs_on_its_inputs_and_returns_its_outputs(tmp_path):
    job = Job("ok", (StageRun("double", "mkdir -p out && echo $(( $(cat data/x.txt) * 2 )) > out/y.txt", ("out",)),),
              ("data",))
    result = run_job(job, _inputs(tmp_path), str(tmp_path / "scratch"), {})
    assert result.ok, result.line
    assert unpack(result.outputs, tmp_path / "back") == ["out", "out/y.txt"]
    assert (tmp_path / "back" / "out" / "y.txt").read_text() == "84\n"
    assert not (tmp_path / "scratch" / "ok").exists()  # the working copy is removed once its outputs are sent


def test_a_failing_stage_is_one_line_and_the_next_job_still_runs(tmp_path):
    bad = Job("bad", (StageRun("svm@bad", "echo 'sonotune svm: error: features.npz is missing' >&2; exit 2", ("o",)),
                      StageRun("never", "touch o", ("o",))), ())
    good = Job("good", (StageRun("fine", "echo done > o", ("o",)),), ())
    started = []
    engine = LocalEngine(tmp_path / "scratch", {})
    results = list(engine.run([(bad, b""), (good, b"")], started.append))
    assert started == ["bad", "good"]
    assert [r.ok for r in results] == [False, True]
    assert results[0].line.startswith("svm@bad exited 2: sonotune svm: error: features.npz is missing (log: ")
    assert results[0].line.endswith(f"{tmp_path / 'scratch' / 'bad' / RESUME_FOLDER / 'grid.log'})")
    assert "\n" not in results[0].line


def test_outputs_a_stage_did_not_write_fail_the_job(tmp_path):
    job = Job("lazy", (StageRun("lazy", "true", ("out.json",)),), ())
    result = run_job(job, b"", str(tmp_path), {})
    assert not result.ok and result.line == "outputs not written: out.json"


def test_a_retry_keeps_the_resume_store_and_drops_the_rest(tmp_path):
    """What a killed attempt left: its finished folds are kept, its half-written outputs are not."""
    copy = tmp_path / "scratch" / "again"
    (copy / RESUME_FOLDER / "resume").mkdir(parents=True)
    (copy / RESUME_FOLDER / "resume" / "fold_0.json").write_text("{}")
    (copy / "out.txt").write_text("half-written by the killed attempt")
    job = Job("again", (StageRun("check", "test ! -e out.txt && test -e .sonotune/resume/fold_0.json && "
                                          "echo resumed > out.txt", ("out.txt",)),), ())
    result = run_job(job, b"", str(tmp_path / "scratch"), {})
    assert result.ok, result.line
    unpack(result.outputs, tmp_path / "back")
    assert (tmp_path / "back" / "out.txt").read_text() == "resumed\n"


def test_the_commands_see_the_shipped_code_first_and_the_forwarded_environment(tmp_path):
    job = Job("env", (StageRun("env", 'echo "$PYTHONPATH|$MLFLOW_TRACKING_URI" > env.txt', ("env.txt",)),), ())
    result = run_job(job, b"", str(tmp_path / "scratch"), {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"})
    unpack(result.outputs, tmp_path / "back")
    pythonpath, uri = (tmp_path / "back" / "env.txt").read_text().strip().split("|")
    assert pythonpath.split(":")[0] == str(tmp_path / "scratch" / "env" / "src")
    assert uri == "http://127.0.0.1:5999"


def _pids_in(folder: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if os.readlink(entry / "cwd").startswith(str(folder)):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def test_a_stage_ends_when_its_worker_is_killed(tmp_path):
    """SIGKILL to the worker (here: a Python process running `run_job`) ends the stage it started."""
    scratch = tmp_path / "scratch"
    script = ("import sys; from sonotune.grid_engine import Job, StageRun, run_job; "
              f"run_job(Job('slow', (StageRun('slow', 'sleep 300', ('never',)),), ()), b'', {str(scratch)!r}, {{}})")
    worker = subprocess.Popen([sys.executable, "-c", script], env=os.environ | {"PYTHONPATH": str(SRC)})
    deadline = time.monotonic() + 60
    while not [p for p in _pids_in(scratch / "slow") if p != worker.pid] and time.monotonic() < deadline:
        time.sleep(0.1)
    stage = [p for p in _pids_in(scratch / "slow") if p != worker.pid]
    assert stage, "the stage command never started"
    worker.kill()
    worker.wait()
    deadline = time.monotonic() + 10
    while any(is_alive(p) for p in stage) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(is_alive(p) for p in stage)
