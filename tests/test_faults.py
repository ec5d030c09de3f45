"""The fault suite: every bad input and fault a user can meet, run against the real `sonotune` command line,
`dvc repro` and a real MLflow server on 127.0.0.1. Each case asserts the one line (no traceback), the exit status,
and that nothing was lost or left half-written (no MLflow run RUNNING, no staging folder, user data intact),
and records a row of docs/failures.md (tests/faults.py); the last test checks that file is what the suite
produced. One tiny prepared repo (phantom, 32 px, 2 folds, 1 epoch) is shared; a case that damages something
works on its own copy.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.faults import (
    DOC, ROWS, SECONDS, call, digest_tree, error_line, half_written, local_statuses, record, render, run_statuses,
    running,
)
from tests.servers import free_port, live_pids_in_group, mlflow_server, wait_healthy
from tests.workspace import BIN, copy_repo, project_env, run, tiny_params

SONOTUNE = str(BIN / "sonotune")
CONFIG = ["--dataset", "phantom", "--backbone", "vgg16", "--strategy", "0"]
STORE = Path(".sonotune/resume/phantom/vgg16/0/mlp")
PASSWORD = "s3cret-pw"


def params() -> dict:
    return tiny_params(**{
        "study.strategies": [0], "cv.n_splits": 2, "finetune.epochs": 1, "gradcam.study_images": 0,
        "datasets.phantom.n_benign": 12, "datasets.phantom.n_malignant": 8, "datasets.phantom.image_size": 32,
    })


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The shared repo, prepared once; never damaged (cases copy it)."""
    repo = copy_repo(tmp_path_factory.mktemp("base") / "repo", params())
    run([SONOTUNE, "prepare", "--dataset", "phantom"], repo)
    return repo


@pytest.fixture
def repo(base, tmp_path) -> Path:
    """A private copy of the prepared repo."""
    copy = tmp_path / "repo"
    shutil.copytree(base, copy, symlinks=True)
    return copy


def sonotune(repo: Path, *args: str, env: dict | None = None):
    return call([SONOTUNE, *args], repo, env)


def set_params(repo: Path, **changes) -> None:
    data = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def assert_nothing_left(repo: Path) -> None:
    assert half_written(repo) == []
    assert running(local_statuses(repo)) == []


# ---------------------------------------------------------------------------------------------------- params


BAD_PARAMS = {
    # case: (fault, params.yaml text edit or None for a missing file, expected words in the line)
    "params-missing": ("params file missing", None, "nope.yaml"),
    "params-not-yaml": ("params.yaml is not YAML", "seed: [42\n", "params.yaml"),
    "params-unknown-key": ("unknown key", {"finetune.epoch": 3}, "finetune.epoch"),
    "params-wrong-type": ("wrong type", {"finetune.epochs": "five"}, "finetune.epochs"),
    "params-out-of-range": ("value out of range", {"cv.n_splits": 1}, "cv.n_splits"),
}


@pytest.mark.parametrize("case", sorted(BAD_PARAMS))
def test_bad_params_are_one_line_before_anything_runs(repo, case):
    fault, edit, named = BAD_PARAMS[case]
    before = digest_tree(repo / "prepared")
    args = ["finetune", *CONFIG]
    if edit is None:
        args += ["--params", "nope.yaml"]
    elif isinstance(edit, str):
        (repo / "params.yaml").write_text(edit)
    else:
        set_params(repo, **edit)
    result = sonotune(repo, *args)
    line = error_line(result, "finetune")
    assert result.returncode == 2 and named in line
    assert digest_tree(repo / "prepared") == before and not (repo / "mlruns").exists() and not (repo / "runs").exists()
    record(case, fault, result, line, "everything; no run, no output", repo)


STAGE_ARGS = {
    # case: (fault, command line, words the line must hold)
    "dataset-undefined-finetune": ("`--dataset` not defined in params",
                                   ["finetune", "--dataset", "nope", "--backbone", "vgg16", "--strategy", "0"],
                                   "not defined under `datasets:`"),
    "dataset-undefined-svm": ("`--dataset` not defined in params",
                              ["svm", "--dataset", "nope", "--backbone", "vgg16", "--strategy", "0"],
                              "not defined under `datasets:`"),
    "dataset-undefined-prepare": ("`--dataset` not defined in params", ["prepare", "--dataset", "nope"],
                                  "not defined in params"),
    "strategy-not-in-table": ("`--strategy 33` (not one of the paper's)",
                              ["finetune", "--dataset", "phantom", "--backbone", "vgg16", "--strategy", "33"],
                              "expected one of 0, 15, 25, 50, 75, 85, 100"),
    "backbone-unknown": ("`--backbone` unknown",
                         ["finetune", "--dataset", "phantom", "--backbone", "vgg17", "--strategy", "0"], "vgg17"),
    "svm-before-finetune": ("svm run before its finetune stage", ["svm", *CONFIG], "run the finetune stage first"),
}


@pytest.mark.parametrize("case", sorted(STAGE_ARGS))
def test_bad_stage_arguments_stop_before_any_run_or_resume_folder(repo, case):
    fault, args, named = STAGE_ARGS[case]
    result = sonotune(repo, *args)
    line = error_line(result, args[0])
    assert result.returncode == 2 and named in line
    assert local_statuses(repo) == [] and not (repo / ".sonotune").exists()
    record(case, fault, result, line, "everything; no MLflow run, no resume folder", repo)


def test_not_prepared_points_at_prepare(repo):
    shutil.rmtree(repo / "prepared")
    result = sonotune(repo, "finetune", *CONFIG)
    line = error_line(result, "finetune")
    assert result.returncode == 2 and "sonotune prepare --dataset phantom" in line
    assert local_statuses(repo) == []
    record("not-prepared", "finetune before `prepare`", result, line, "everything; no run", repo)


# ---------------------------------------------------------------------------------------------------- data


def noise_png(path: Path, seed: int, size: int = 32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def folder_set(repo: Path, per_class: int = 4, classes=("benign", "malignant")) -> Path:
    root = repo / "data" / "bad"
    for k, name in enumerate(classes):
        for i in range(per_class):
            noise_png(root / name / f"{name}{i}.png", 100 * k + i)
    set_params(repo, **{"datasets.bad": {"kind": "folder", "root": "data/bad",
                                         "classes": {"benign": "benign", "malignant": "malignant"}}})
    return root


def prepare_bad(repo: Path, *extra: str):
    before = digest_tree(repo / "data")
    result = sonotune(repo, "prepare", "--dataset", "bad", *extra)
    assert digest_tree(repo / "data") == before, "prepare changed the user's data"
    assert half_written(repo) == []
    return result


BAD_DATASETS = {
    # case: (fault, damage(root), words of the line)
    "data-root-missing": ("dataset root missing", lambda root: shutil.rmtree(root), "not found"),
    "data-class-folder-empty": ("a class folder without images",
                                lambda root: [p.unlink() for p in (root / "malignant").iterdir()], "no images"),
    "data-class-folder-missing": ("a listed class folder missing",
                                  lambda root: shutil.rmtree(root / "malignant"), "class folder not found"),
    "data-too-few-groups": ("fewer images in a class than folds",
                            lambda root: [p.unlink() for p in sorted((root / "malignant").iterdir())[1:]],
                            "malignant"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
def test_bad_datasets_are_one_line_and_keep_the_previous_output(repo, case):
    fault, damage, named = BAD_DATASETS[case]
    root = folder_set(repo)
    assert prepare_bad(repo).returncode == 0
    previous = digest_tree(repo / "prepared" / "bad")
    damage(root)
    result = prepare_bad(repo)
    line = error_line(result, "prepare")
    assert result.returncode == 2 and named in line
    assert digest_tree(repo / "prepared" / "bad") == previous
    record(case, fault, result, line, "the data and the previous prepared/bad/", repo)


EXCLUDED = {
    # case: (fault, damage(root), reason kind in the summary)
    "image-corrupt": ("a corrupt image", lambda root: (root / "benign" / "benign0.png").write_bytes(b"\x89PNG junk"),
                      "corrupt image"),
    "image-truncated": ("a truncated image", lambda root: (root / "benign" / "benign1.png").write_bytes(
        (root / "benign" / "benign1.png").read_bytes()[:60]), "corrupt image"),
    "file-not-an-image": ("a non-image file in a class folder",
                          lambda root: (root / "benign" / "notes.txt").write_text("hello"), "not an image"),
    "image-over-decode-limit": ("a 7200×7200 px image (over the 50 Mpx decode limit)",
                                lambda root: Image.new("L", (7200, 7200), 128).save(root / "benign" / "huge.png"),
                                "corrupt image"),
    "mask-saved-as-jpeg": ("a segmentation mask saved as JPEG where an image should be",
                           lambda root: _mask_image().save(root / "benign" / "lesion.jpg", quality=70), "mask"),
    "mask-downscaled-smoothly": ("a segmentation mask downscaled with smoothing where an image should be",
                                 lambda root: _mask_image().resize((48, 40), Image.BILINEAR).save(
                                     root / "benign" / "lesion.png"), "mask"),
    "image-1x1-px": ("a 1×1 px image", lambda root: Image.new("L", (1, 1), 128).save(root / "benign" / "dot.png"),
                     "too small"),
    "symlink-dangling": ("a symlink to a missing file named `.png`",
                         lambda root: (root / "benign" / "gone.png").symlink_to(root / "nowhere.png"), "missing file"),
    "symlink-loop": ("a symlink loop named `.png`",
                     lambda root: (root / "benign" / "loop.png").symlink_to(root / "benign" / "loop.png"),
                     "missing file"),
    "fifo-named-png": ("a FIFO named `.png` (reading it would block forever)",
                       lambda root: os.mkfifo(root / "benign" / "pipe.png"), "not an image"),
}


def _mask_image() -> Image.Image:
    pixels = np.zeros((120, 144), dtype=np.uint8)
    pixels[30:80, 40:100] = 255
    return Image.fromarray(pixels)


@pytest.mark.parametrize("case", sorted(EXCLUDED))
def test_bad_images_are_excluded_with_the_reason_and_where_to_look(repo, case):
    fault, damage, kind = EXCLUDED[case]
    damage(folder_set(repo))
    result = prepare_bad(repo)
    assert result.returncode == 0, result.output
    assert "Traceback" not in result.output and "DecompressionBomb" not in result.output
    assert "site-packages" not in result.output, "a raw library warning (with its install path) reached the user"
    line = next(line for line in result.stdout.splitlines() if line.startswith("bad: "))
    assert f"1 excluded ({kind} 1;" in line and "prepared/bad.json" in line
    report = (repo / "prepared" / "bad.json").read_text()
    if case == "image-over-decode-limit":
        assert "huge.png" in report and "exceeds limit of 50000000 pixels" in report
    record(case, fault, result, line.split(", digest")[0], "the data; the other images prepared", repo)


def test_strict_stops_at_the_first_bad_image(repo):
    root = folder_set(repo)
    (root / "benign" / "benign0.png").write_bytes(b"junk")
    result = prepare_bad(repo, "--strict")
    line = error_line(result, "prepare")
    assert result.returncode == 2 and "benign0.png" in line and not (repo / "prepared" / "bad").exists()
    record("image-corrupt-strict", "a corrupt image under `--strict`", result, line, "the data; nothing written",
           repo)


UNREAD = {
    "images-in-subfolder": ("images in a sub-folder of a class folder (`benign/patient7/*.png`)",
                            lambda root: [noise_png(root / "benign" / "patient7" / f"p{i}.png", 900 + i)
                                          for i in range(3)], "benign/patient7/ (3)"),
    "class-folder-not-listed": ("a class folder not listed in `classes:`",
                                lambda root: [noise_png(root / "atypical" / f"a{i}.png", 800 + i) for i in range(2)],
                                "atypical/ (2)"),
}


@pytest.mark.parametrize("case", sorted(UNREAD))
def test_images_a_folder_source_does_not_read_are_named(repo, case):
    fault, add, named = UNREAD[case]
    add(folder_set(repo))
    result = prepare_bad(repo)
    assert result.returncode == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("sonotune prepare: warning: ")]
    assert len(lines) == 1 and named in lines[0] and "classes:" in lines[0]
    record(case, fault, result, lines[0], "the data; the listed class folders prepared", repo)


def test_csv_path_outside_its_root(repo):
    root = folder_set(repo)
    rows = [f"{p.relative_to(root).as_posix()},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    (root / "manifest.csv").write_text("path,label\n../../params.yaml,benign\n" + "\n".join(rows) + "\n")
    set_params(repo, **{"datasets.bad": {"kind": "csv", "manifest": "data/bad/manifest.csv"}})
    result = prepare_bad(repo)
    assert "Traceback" not in result.output
    if result.returncode == 0:  # excluded with its reason
        line = next(line for line in result.stdout.splitlines() if line.startswith("bad: "))
        assert "1 excluded" in line
        line = line.split(", digest")[0]
    else:
        line = error_line(result, "prepare")
        assert result.returncode == 2 and "params.yaml" in line
    record("csv-path-outside-root", "a CSV manifest row pointing outside its root", result, line,
           "the data; the rows inside the root", repo)


# ---------------------------------------------------------------------------------------------------- stores


def read_only(path: Path) -> None:
    """Make a folder unwritable, also for root (the immutable attribute)."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o555)


def writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=False)
    else:
        path.chmod(0o755)


@pytest.fixture
def locked(repo):
    """Folders a case made read-only, made writable again afterwards (so pytest can delete them)."""
    folders: list[Path] = []
    yield folders
    for folder in folders:
        writable(folder)


UNWRITABLE = {
    # case: (fault, folder made read-only, command, words of the line)
    "runs-unwritable": ("`runs/` not writable", "runs", ["finetune", *CONFIG], "runs/phantom/vgg16/0/"),
    "resume-store-unwritable": ("`.sonotune/` (resume store) not writable", ".sonotune", ["finetune", *CONFIG],
                                ".sonotune/resume/"),
    "mlruns-read-only": ("`mlruns/` read-only", "mlruns", ["finetune", *CONFIG], "mlruns/"),
    "prepared-unwritable": ("`prepared/` not writable", "prepared", ["prepare", "--dataset", "phantom"],
                            "prepared/"),
}


@pytest.mark.parametrize("case", sorted(UNWRITABLE))
def test_unwritable_outputs_and_stores_are_found_before_training(repo, locked, case):
    fault, folder, args, named = UNWRITABLE[case]
    (repo / folder).mkdir(exist_ok=True)
    before = digest_tree(repo / "prepared")
    read_only(repo / folder)
    locked.append(repo / folder)
    result = sonotune(repo, *args)
    line = error_line(result, args[0])
    assert result.returncode == 2 and named in line and "cannot write" in line
    assert result.seconds < 30, "the check must come before any training"
    assert digest_tree(repo / "prepared") == before
    record(case, fault, result, line, "everything; nothing trained", repo)


def broken_store(repo: Path, how: str) -> None:
    db = repo / "mlruns" / "mlflow.db"
    db.parent.mkdir(exist_ok=True)
    if how == "garbage":
        db.write_bytes(b"this is not a database" * 100)
    elif how == "empty":
        db.write_bytes(b"")
    else:  # a SQLite file cut short
        import sqlite3

        with sqlite3.connect(db) as connection:
            connection.execute("CREATE TABLE runs (run_uuid TEXT, status TEXT)")
            connection.executemany("INSERT INTO runs VALUES (?, ?)", [(str(i) * 20, "FINISHED") for i in range(3000)])
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])


STORES = {
    "mlflow-db-garbage": ("`mlruns/mlflow.db` is not a database", "garbage", "not a readable MLflow store"),
    "mlflow-db-truncated": ("`mlruns/mlflow.db` truncated", "truncated", "not a readable MLflow store"),
    "mlflow-db-emptied": ("`mlruns/mlflow.db` emptied (0 bytes)", "empty", "empty file"),
}


@pytest.mark.parametrize("case", sorted(STORES))
def test_a_damaged_local_store_is_refused_not_recreated(repo, case):
    fault, how, named = STORES[case]
    broken_store(repo, how)
    before = (repo / "mlruns" / "mlflow.db").read_bytes()
    result = sonotune(repo, "finetune", *CONFIG)
    line = error_line(result, "finetune")
    assert result.returncode == 2 and named in line and "mlruns/mlflow.db" in line
    assert (repo / "mlruns" / "mlflow.db").read_bytes() == before, "the store must be left for the user to restore"
    record(case, fault, result, line, "the damaged file untouched (to restore); nothing trained", repo)


CACHES = {
    "cache-npy-missing": ("prepared image array missing", lambda d: (d / "images_32.npy").unlink(), "images_32.npy"),
    "cache-npy-truncated": ("prepared image array truncated",
                            lambda d: (d / "images_32.npy").write_bytes((d / "images_32.npy").read_bytes()[:5000]),
                            "images_32.npy"),
    "cache-json-missing": ("prepared `cache.json` missing", lambda d: (d / "cache.json").unlink(), "cache.json"),
    "cache-json-truncated": ("prepared `cache.json` truncated",
                             lambda d: (d / "cache.json").write_text((d / "cache.json").read_text()[:20]),
                             "cache.json"),
}


@pytest.mark.parametrize("case", sorted(CACHES))
def test_a_partial_prepared_cache_is_one_line(repo, case):
    fault, damage, named = CACHES[case]
    damage(repo / "prepared" / "phantom")
    result = sonotune(repo, "finetune", *CONFIG)
    line = error_line(result, "finetune")
    assert result.returncode == 2 and named in line and "sonotune prepare --dataset phantom" in line
    assert_nothing_left(repo)
    record(case, fault, result, line, "everything else; no run", repo)


# ---------------------------------------------------------------------------------------------------- signals


def start_finetune(repo: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([SONOTUNE, "finetune", *CONFIG], cwd=repo, env=env or project_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_fold_0(repo: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    marker = repo / STORE / "fold_0.json"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert process.poll() is None, f"finetune exited ({process.returncode}):\n{process.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, "fold 0 was not persisted in time"
        time.sleep(0.1)


SIGNALS = {
    "sigterm-mid-stage": ("SIGTERM mid-stage (a scheduler, `dvc queue kill`)", signal.SIGTERM, 143),
    "ctrl-c-mid-stage": ("Ctrl-C (SIGINT) mid-stage", signal.SIGINT, 130),
    "kill-9-mid-stage": ("`kill -9` mid-stage", signal.SIGKILL, -9),
}


@pytest.mark.parametrize("case", sorted(SIGNALS))
def test_a_signal_ends_the_stage_like_an_error_and_the_rerun_resumes(repo, case):
    fault, sig, status = SIGNALS[case]
    process = start_finetune(repo)
    wait_for_fold_0(repo, process)
    sent = time.monotonic()
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    seconds = time.monotonic() - sent
    assert process.returncode == status, stderr[-3000:]
    statuses = local_statuses(repo)
    if sig == signal.SIGKILL:
        line = "(none: the process is killed)"
        assert running(statuses), "a killed stage cannot close its runs; the rerun must"
    else:
        from tests.faults import Result

        line = error_line(Result([], process.returncode, stdout, stderr, seconds), "finetune")
        assert f"interrupted by {signal.Signals(sig).name}" in line
        parents = [status for _, status, parent in statuses if parent == ""]
        assert running(statuses) == [] and parents == ["FAILED"], statuses  # fold 0's run FINISHED: it is kept
    assert half_written(repo) == [] and (repo / STORE / "fold_0.json").exists()

    rerun = sonotune(repo, "finetune", *CONFIG)
    assert rerun.returncode == 0, rerun.output[-3000:]
    assert "resuming, folds [0] already done" in rerun.stdout
    statuses = local_statuses(repo)
    parents = [s for s in statuses if s[2] == ""]
    assert running(statuses) == [] and [s for _, s, _ in parents] == ["FINISHED"], statuses
    assert not (repo / STORE).exists() and (repo / "runs/phantom/vgg16/0/mlp_metrics.json").is_file()
    record(case, fault, None, line, "fold 0 (the rerun trains only fold 1, into the same parent run); "
           "runs FAILED, none RUNNING after the rerun", repo, command="sonotune finetune …", seconds=seconds)
    ROWS[case].status = str(status)


RESUME_DAMAGE = {
    # case: (fault, damage(store), words of the line)
    "resume-fold-json-truncated": ("a truncated fold record in the resume store",
                                   lambda store: (store / "fold_0.json").write_text('{"run_id": "ab'),
                                   "unreadable record"),
    "resume-fold-npz-missing": ("a fold's arrays (`.npz`) missing from the resume store",
                                lambda store: (store / "fold_0.npz").unlink(), "fold_0.npz is missing"),
}


def test_a_damaged_resume_store_is_one_line_naming_the_fold(repo):
    """One interrupted run (fold 0 kept), then each damage on a copy of its store: one line, nothing RUNNING."""
    process = start_finetune(repo)
    wait_for_fold_0(repo, process)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    kept = repo.parent / "kept-store"
    shutil.copytree(repo / STORE, kept)
    for case, (fault, damage, named) in RESUME_DAMAGE.items():
        shutil.rmtree(repo / STORE)
        shutil.copytree(kept, repo / STORE)
        damage(repo / STORE)
        result = sonotune(repo, "finetune", *CONFIG)
        line = error_line(result, "finetune")
        assert result.returncode == 2 and named in line and "fold_0.*" in line, line
        assert running(local_statuses(repo)) == [] and half_written(repo) == []
        record(case, fault, result, line, "the other folds and the MLflow runs (none RUNNING)", repo)


def test_sigterm_to_a_dvc_repro_job_ends_its_stage_like_an_error_and_repro_resumes(repo):
    """A scheduler (SLURM, `timeout`, a CI runner) ends a job with SIGTERM to its process group: `dvc repro` and
    the stage it runs both get it; the stage closes its runs FAILED and keeps fold 0, the next repro resumes."""
    process = subprocess.Popen(["dvc", "repro", "finetune@phantom-vgg16-0"], cwd=repo, env=project_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_fold_0(repo, process)
    sent = time.monotonic()
    os.killpg(process.pid, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    seconds = time.monotonic() - sent
    assert process.returncode != 0 and "Traceback" not in stdout + stderr, (stdout + stderr)[-3000:]
    line = next(line for line in (stdout + stderr).splitlines() if line.startswith("sonotune finetune: error: "))
    assert "interrupted by SIGTERM" in line
    statuses = local_statuses(repo)
    assert running(statuses) == [] and half_written(repo) == [] and (repo / STORE / "fold_0.json").exists()
    again = call(["dvc", "repro", "finetune@phantom-vgg16-0"], repo)
    assert again.returncode == 0 and "resuming, folds [0] already done" in again.output, again.output[-3000:]
    assert running(local_statuses(repo)) == []
    record("sigterm-to-dvc-repro", "SIGTERM to a `dvc repro` job's process group (a scheduler ending the job)",
           None, line, "fold 0 (the next `dvc repro` trains only fold 1); runs FAILED, none RUNNING", repo,
           command="dvc repro finetune@…", seconds=seconds)
    ROWS["sigterm-to-dvc-repro"].status = str(process.returncode)


# ---------------------------------------------------------------------------------------------------- tracking


def server_env(uri: str) -> dict:
    return project_env(MLFLOW_TRACKING_URI=uri)


def with_password(uri: str) -> str:
    return uri.replace("http://", f"http://alice:{PASSWORD}@")


SERVER_DOWN = {
    "server-down-finetune": ["finetune", *CONFIG],
    "server-down-svm": ["svm", *CONFIG],
    "server-down-report": ["report"],
    "server-down-deploy": ["deploy", *CONFIG],
}


@pytest.mark.parametrize("case", sorted(SERVER_DOWN))
def test_a_server_down_at_start_is_one_line_naming_it_masked(repo, case):
    uri = with_password(f"http://127.0.0.1:{free_port()}")
    args = SERVER_DOWN[case]
    result = sonotune(repo, *args, env=server_env(uri))
    line = error_line(result, args[0])
    assert result.returncode == 2 and "alice:***@127.0.0.1" in line and PASSWORD not in result.output
    assert_nothing_left(repo)
    record(case, f"tracking server down at start (`{args[0]}`)", result, line, "everything; nothing trained", repo)


def test_queue_without_a_server(repo):
    result = sonotune(repo, "queue")
    line = error_line(result, "queue")
    assert result.returncode == 2 and "not a tracking server" in line
    record("queue-without-server", "`sonotune queue` without a tracking server", result, line,
           "everything; nothing queued", repo)


def _start_server(store: Path, port: int) -> subprocess.Popen:
    store.mkdir(parents=True, exist_ok=True)
    with (store / "server.log").open("a") as log:
        process = subprocess.Popen([SONOTUNE, "server", "--store", str(store), "--port", str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, env=project_env(), start_new_session=True)
    wait_healthy(f"http://127.0.0.1:{port}", process, store / "server.log")
    return process


def _kill_group(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while live_pids_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not live_pids_in_group(process.pid)


def _finetune_until_the_server_fails(repo: Path, store: Path, port: int, break_server, restore_server):
    """`sonotune finetune` against a password-protected server URI; once fold 0 is saved, `break_server(server)`.
    Returns the stage's Result, with the seconds from the fault to the stage's exit."""
    from tests.faults import Result

    server = _start_server(store, port)
    try:
        process = start_finetune(repo, server_env(with_password(f"http://127.0.0.1:{port}")))
        wait_for_fold_0(repo, process)
        break_server(server)
        broken = time.monotonic()
        stdout, stderr = process.communicate(timeout=300)
        seconds = time.monotonic() - broken
    finally:
        restore_server(server)
    return Result([], process.returncode, stdout, stderr, seconds)


def test_a_server_lost_mid_stage_ends_it_within_a_minute_and_the_rerun_resumes(repo, tmp_path):
    store, port = tmp_path / "store", free_port()
    uri = f"http://127.0.0.1:{port}"
    env = server_env(with_password(uri))
    result = _finetune_until_the_server_fails(
        repo, store, port, _kill_group, lambda server: _kill_group(server) if server.poll() is None else None)
    stdout, seconds = result.stdout, result.seconds
    line = error_line(result, "finetune")
    assert result.returncode == 2 and "alice:***@127.0.0.1" in line and "lost mid-stage" in line
    assert PASSWORD not in result.output and "alice:***@" in stdout, "MLflow's run links must be printed masked"
    assert (repo / STORE / "fold_0.json").exists() and half_written(repo) == []
    record("server-lost-mid-stage", "tracking server lost mid-stage (killed after fold 0)", result, line,
           "fold 0; the rerun with the server back resumes into the same parent, killed attempt FAILED",
           repo, command="sonotune finetune …", seconds=seconds)

    with mlflow_server(store, port=port):
        rerun = sonotune(repo, "finetune", *CONFIG, env=env)
        assert rerun.returncode == 0, rerun.output[-3000:]
        assert "resuming, folds [0] already done" in rerun.stdout
        assert PASSWORD not in rerun.output and "alice:***@" in rerun.stdout
        statuses = run_statuses(uri)
        parents = [s for s in statuses if s[2] == ""]
        assert running(statuses) == [] and [s for _, s, _ in parents] == ["FINISHED"], statuses
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        run_ = client.get_run(client.search_runs([client.get_experiment_by_name("sonotune-phantom")
                                                  .experiment_id])[0].info.run_id)
        assert PASSWORD not in str(run_.data.params) + str(run_.data.tags)
    stored = "".join(p.read_text(errors="ignore") for p in store.rglob("*.log"))
    assert PASSWORD not in stored
    ROWS["server-lost-mid-stage"].kept += "; the password is never printed (MLflow's links show `alice:***@`)"


def test_a_server_that_hangs_mid_stage_ends_it_within_a_minute(repo, tmp_path):
    """A server that still accepts connections but never answers (its process frozen with SIGSTOP) is worse
    than a dead one: every MLflow call waits out its timeout. The stage still ends within 60 s, in one line."""

    def thaw_and_kill(server):
        os.killpg(server.pid, signal.SIGCONT)
        _kill_group(server)

    result = _finetune_until_the_server_fails(repo, tmp_path / "store", free_port(),
                                              lambda server: os.killpg(server.pid, signal.SIGSTOP), thaw_and_kill)
    seconds = result.seconds
    line = error_line(result, "finetune")
    assert result.returncode == 2 and "alice:***@127.0.0.1" in line and "mid-stage" in line, result.output[-2000:]
    assert seconds < 60, f"the stage took {seconds:.0f} s to stop after the server hung"
    assert PASSWORD not in result.output and (repo / STORE / "fold_0.json").exists() and half_written(repo) == []
    record("server-hangs-mid-stage", "tracking server hangs mid-stage (process stopped after fold 0)", result, line,
           "fold 0; rerun the same command with the server back to resume", repo, command="sonotune finetune …",
           seconds=seconds)


def test_the_server_watch_interrupts_a_long_step_when_the_server_goes_away():
    """A fold may not call MLflow for many minutes: the watch asks /health itself and interrupts the main thread
    (a real refused connection; the main thread stands for a training loop of short steps)."""
    from sonotune.tracking import LOST, ServerWatch

    watch = ServerWatch(f"http://127.0.0.1:{free_port()}", interval=0.3, failures=2).start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        while time.monotonic() - started < 30:
            time.sleep(0.01)
    watch.stop()
    assert watch.lost == LOST and time.monotonic() - started < 5
    assert "lost mid-stage (connection refused or lost)" in watch.line()


def test_server_on_a_port_in_use_fails(repo):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = sonotune(repo, "server", "--store", "store", "--port", str(port))
    line = error_line(result, "server")
    assert result.returncode == 2 and "cannot listen" in line and "MLflow tracking server on" not in result.stdout
    record("server-port-in-use", "`sonotune server` on a port in use", result, line, "everything", repo)


def test_promote_an_unknown_model(repo):
    result = sonotune(repo, "promote", "sonotune-nope")
    line = error_line(result, "promote")
    assert result.returncode == 2 and "sonotune-nope" in line
    record("promote-unknown-model", "`sonotune promote` of a model never deployed", result, line, "everything",
           repo)


def test_promote_without_a_version_and_predict_an_unreadable_image(repo, tmp_path):
    for args in (["finetune", *CONFIG], ["deploy", *CONFIG]):
        done = sonotune(repo, *args)
        assert done.returncode == 0, done.output[-3000:]
    result = sonotune(repo, "promote", "sonotune-phantom")
    assert result.returncode == 0 and "Traceback" not in result.output, result.output[-3000:]
    line = result.stdout.strip().splitlines()[-1]
    assert line == "models:/sonotune-phantom@champion -> version 1"
    record("promote-without-version", "`sonotune promote NAME` without a version (picks the best CV AUC)", result,
           line, "the registry; only the alias moves", repo)

    (tmp_path / "garbage.png").write_bytes(b"not a png")
    noise_png(tmp_path / "good.png", 3)
    out = tmp_path / "predictions.csv"
    result = sonotune(repo, "predict", "models:/sonotune-phantom@champion", str(tmp_path / "good.png"),
                      str(tmp_path / "garbage.png"), "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.output, result.output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("sonotune predict: skipped ")]
    assert len(lines) == 1 and "garbage.png" in lines[0]
    assert len(out.read_text().splitlines()) == 2  # header + the readable image
    record("predict-unreadable-image", "`sonotune predict` given an unreadable image among good ones", result,
           lines[0], "the predictions of the readable images (CSV written)", repo)
    assert running(local_statuses(repo)) == []


def test_predict_with_a_model_that_does_not_exist(repo, tmp_path):
    noise_png(tmp_path / "x.png", 1)
    result = sonotune(repo, "predict", "models:/sonotune-nope@champion", str(tmp_path / "x.png"))
    line = error_line(result, "predict")
    assert result.returncode == 2 and "sonotune-nope" in line
    record("predict-unknown-model", "`sonotune predict` with a model URI that does not exist", result, line,
           "everything; no CSV written", repo)


# ---------------------------------------------------------------------------------------------------- DVC


def test_a_fresh_clone_never_lets_dvc_delete_the_users_data(tmp_path):
    clone = copy_repo(tmp_path / "repo", params())
    data = folder_set(clone)
    before = digest_tree(data)
    status = call(["dvc", "status"], clone)
    assert status.returncode == 0 and "data.dvc" not in status.output and "data:" not in status.output
    checkout = call(["dvc", "checkout", "--force"], clone)
    assert digest_tree(data) == before, "dvc checkout --force deleted user data"
    # a fresh clone has computed none of the pipeline's outputs: DVC says so, and leaves data/ alone
    errors = [line for line in checkout.stderr.splitlines() if line.startswith("ERROR")]
    line = (errors or ["(nothing to check out)"])[0] + " (the pipeline's outputs, none computed yet)"
    record("dvc-checkout-force-fresh-clone", "`dvc checkout --force` on a fresh clone with data in `data/`", checkout,
           line, "`data/` (data.dvc tracks data/phantom alone: the rest of `data/` is left alone); `dvc status` names no data", clone,
           command="dvc checkout --force")


def test_two_dvc_repro_at_once_and_a_failed_repro_lose_nothing(repo):
    data = folder_set(repo)
    before = digest_tree(data)
    first = subprocess.Popen(["dvc", "repro", "finetune@phantom-vgg16-0"], cwd=repo, env=project_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (repo / STORE / "state.json").exists():  # the first is training: it holds DVC's lock for a while
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
    second = call(["dvc", "repro", "finetune@phantom-vgg16-0"], repo)
    first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode != 0, second.output
    line = next(line for line in second.stderr.splitlines() if line.startswith("ERROR"))
    assert "is busy, it is being blocked by" in line or "Unable to acquire lock" in line, second.output
    line = re.sub(r"'[^']*' is busy", "'<an output>' is busy", line.split(". Check the page")[0])
    record("two-dvc-repro-at-once", "two `dvc repro` at once", second, line,
           "the first run's outputs; the second changes nothing", repo)

    prepared = digest_tree(repo / "prepared" / "phantom")
    set_params(repo, **{"datasets.phantom.n_benign": -1})
    failed = call(["dvc", "repro", "prepare@phantom"], repo)
    assert failed.returncode != 0 and "Traceback" not in failed.output
    line = next(line for line in failed.stderr.splitlines() if line.startswith("sonotune prepare: error: "))
    assert "n_benign" in line
    assert digest_tree(data) == before
    call(["dvc", "checkout", "--force"], repo)
    assert digest_tree(data) == before and digest_tree(repo / "prepared" / "phantom") == prepared
    record("dvc-repro-fails", "`dvc repro` stopped by a bad param", failed, line,
           "`data/`; the last good `prepared/phantom` (`dvc checkout --force` restores it, and keeps `data/`)", repo,
           command="dvc repro prepare@phantom")


# ---------------------------------------------------------------------------------------------------- preflight


def test_a_duplicate_key_in_params_is_one_line(repo):
    text = (repo / "params.yaml").read_text()
    (repo / "params.yaml").write_text(text + "seed: 7\n")
    result = sonotune(repo, "finetune", *CONFIG)
    line = error_line(result, "finetune")
    assert result.returncode == 2 and "'seed' appears twice" in line and "params.yaml" in line
    assert not (repo / "mlruns").exists() and not (repo / "runs").exists()
    record("params-duplicate-key", "a key given twice in params.yaml (PyYAML would keep the last)", result, line,
           "everything; no run, no output", repo)


BACKENDS = {
    # case: (fault, KERAS_BACKEND, command, words of the line)
    "keras-backend-bogus": ("`KERAS_BACKEND=bogus`", "bogus", ["finetune", *CONFIG], "unset KERAS_BACKEND"),
    "keras-backend-torch": ("`KERAS_BACKEND=torch` (not a backend sonotune runs on)", "torch", ["deploy", *CONFIG],
                            "tensorflow or jax"),
    "keras-backend-jax-gradcam": ("`KERAS_BACKEND=jax` with Grad-CAM figures on (the shipped params)", "jax",
                                  ["finetune", *CONFIG], "gradcam.study_images: 0"),
    "keras-backend-jax-grid": ("`KERAS_BACKEND=jax` with Grad-CAM on, for the whole grid", "jax",
                               ["grid", "--engine", "local"], "gradcam.study_images: 0"),
}


@pytest.mark.parametrize("case", sorted(BACKENDS))
def test_a_backend_that_cannot_run_the_command_is_found_before_any_work(repo, case):
    fault, backend, args, named = BACKENDS[case]
    set_params(repo, **{"gradcam.study_images": 2})
    result = sonotune(repo, *args, env=project_env(KERAS_BACKEND=backend))
    line = error_line(result, args[0])
    assert result.returncode == 2 and named in line and f"KERAS_BACKEND={backend}" in line
    assert not (repo / "runs").exists() and not (repo / ".sonotune").exists() and running(local_statuses(repo)) == []
    record(case, fault, result, line, "everything; nothing trained", repo)


def test_a_ray_cluster_that_does_not_answer_is_found_before_any_work(repo):
    address = f"127.0.0.1:{free_port()}"
    prepared = digest_tree(repo / "prepared")
    result = sonotune(repo, "grid", "--engine", "ray", env=project_env(RAY_ADDRESS=address))
    line = error_line(result, "grid")
    assert result.returncode == 2 and f"RAY_ADDRESS={address}" in line and "ray start" in line
    assert result.seconds < 30 and digest_tree(repo / "prepared") == prepared and "dvc repro" not in result.stdout
    record("grid-ray-address-refused", "`sonotune grid --engine ray` with a RAY_ADDRESS that refuses", result, line,
           "everything; no `dvc repro` ran", repo)


def _kill_processes_naming(marker: str) -> None:
    """Kill every process whose command line holds `marker` (one Ray cluster's temp dir), never a broad name."""
    import psutil

    procs = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    family = set(procs) | {child for p in procs for child in p.children(recursive=True)}
    for process in family:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(family), timeout=15)


@pytest.fixture
def ray_start_head():
    """A `ray start --head` cluster on 127.0.0.1 that a plain `ray.init()` finds (its address file lies under
    RAY_TMPDIR, which the test hands to the grid too: other people's Ray on the machine is neither seen nor
    touched); its processes are killed at the end."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("Ray is not installed: pip install 'sonotune[ray]'")
    tmp = tempfile.mkdtemp(prefix="sonotune-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = project_env(RAY_TMPDIR=tmp)
    env.pop("RAY_ADDRESS", None)
    ports = ["--port", "--node-manager-port", "--object-manager-port", "--ray-client-server-port",
             "--dashboard-agent-listen-port", "--metrics-export-port", "--dashboard-agent-grpc-port"]
    command = [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
               "--include-dashboard", "false", "--disable-usage-stats"]
    for flag in ports:
        command += [flag, str(free_port())]
    try:
        run(command, Path(tmp), env)
        assert Path(tmp, "ray", "ray_current_cluster").exists()
        yield env
    finally:
        _kill_processes_naming(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_grid_runs_on_a_ray_of_its_own_beside_a_ray_start_cluster(repo, ray_start_head, tmp_path):
    with mlflow_server(tmp_path / "mlflow") as uri:
        env = ray_start_head | {"MLFLOW_TRACKING_URI": uri}
        result = sonotune(repo, "grid", "--engine", "ray", "--workers", "1", env=env)
        statuses = run_statuses(uri)
    assert "Traceback" not in result.output and "ValueError" not in result.output, result.output[-3000:]
    assert result.returncode == 0, result.output[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("1 of 1 configuration(s) done") and last.endswith("on ray")
    assert statuses and running(statuses) == [] and half_written(repo) == []
    record("grid-ray-start-cluster", "`sonotune grid --engine ray --workers 1` with no RAY_ADDRESS and a "
           "`ray start` cluster on the machine", result, re.sub(r"done in \d+ s", "done in <n> s", last),
           "runs on a Ray of its own; the `ray start` cluster is left alone", repo, bound=300)


@pytest.fixture(scope="module")
def grid_server(tmp_path_factory):
    """A tracking server the grid's cases share."""
    with mlflow_server(tmp_path_factory.mktemp("grid-mlflow")) as uri:
        yield uri


def hold_dvc_lock(repo: Path) -> subprocess.Popen:
    """Another DVC command's hold on the workspace's lock (DVC's own lock file, held by a live process)."""
    holder = subprocess.Popen([sys.executable, "-c", "import time, zc.lockfile; "
                               "lock = zc.lockfile.LockFile('.dvc/tmp/lock'); print('held', flush=True); "
                               "time.sleep(120)"], cwd=repo, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


GRID_REFUSALS = {
    # case: (fault, how the workspace or environment is damaged, words of the line)
    "grid-uncommitted-changes": ("`sonotune grid` with params.yaml edited but not committed", "uncommitted",
                                 "uncommitted changes in params.yaml: grid workers check out commit"),
    "grid-not-a-git-repository": ("`sonotune grid` in a folder that is not a git repository", "no-git",
                                  "is not a git repository with a commit"),
    "grid-dvc-lock-held": ("`sonotune grid --lock-wait 1` while another DVC command holds the workspace's lock",
                           "lock", "`dvc repro prepare pretrain`: another DVC command holds this workspace's lock "
                           "(.dvc/tmp/lock); waited 1 s"),
    "grid-without-server": ("`sonotune grid` without a tracking server (`MLFLOW_TRACKING_URI` unset)", "no-server",
                            "not a tracking server: grid jobs run in clones that are deleted"),
    "grid-server-unreachable": ("`sonotune grid` with `MLFLOW_TRACKING_URI` naming a server that is down",
                                "server-down", "is unreachable"),
}


@pytest.mark.parametrize("case", sorted(GRID_REFUSALS))
def test_the_grid_refuses_in_one_line_before_any_job(repo, grid_server, case):
    fault, damage, named = GRID_REFUSALS[case]
    env = project_env(MLFLOW_TRACKING_URI=grid_server)
    holder = None
    if damage == "uncommitted":
        set_params(repo, **{"finetune.epochs": 2})
    elif damage == "no-git":
        shutil.rmtree(repo / ".git")
    elif damage == "lock":
        holder = hold_dvc_lock(repo)
    elif damage == "no-server":
        env = project_env()
    elif damage == "server-down":
        env = project_env(MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    try:
        result = sonotune(repo, "grid", "--engine", "local", "--lock-wait", "1", env=env)
    finally:
        if holder is not None:
            holder.kill()
            holder.wait()
    line = error_line(result, "grid")
    assert result.returncode == 2 and named in line, line
    assert not (repo / "runs").exists() and not (repo / "prepared" / "pretrain").exists() and half_written(repo) == []
    assert not list((repo / ".dvc" / "cache").rglob("sonotune-claims/*/*.json"))
    assert "Running stage" not in result.output and running(run_statuses(grid_server)) == []
    record(case, fault, result, line, "everything; no job ran, no claim taken", repo)


def _wait_for_a_running_job(uri: str, claims_folder: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Until a job's stage has opened its MLflow run: a run RUNNING while the job's claim is held (the driver's
    pretrain run has ended before any claim is taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if list(claims_folder.rglob("*.json")) and running(run_statuses(uri)):
            return
        time.sleep(0.5)
    raise AssertionError(f"no job started a run (exit {process.poll()})")


def test_ctrl_c_on_the_grid_cancels_its_job_releases_its_claim_and_the_rerun_completes(repo, grid_server, tmp_path):
    """SIGINT to the grid's process group (the terminal's Ctrl-C) while a job's finetune runs."""
    env = project_env(MLFLOW_TRACKING_URI=grid_server)
    command = [SONOTUNE, "grid", "--engine", "local", "--scratch", str(tmp_path / "scratch")]
    claims_folder = repo / ".dvc" / "cache" / "sonotune-claims"  # no default remote: the cache serves as one
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        _wait_for_a_running_job(grid_server, claims_folder, process)
        sent = time.monotonic()
        os.killpg(process.pid, signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    from tests.faults import Result

    result = Result(command, process.returncode, stdout, stderr, time.monotonic() - sent)
    line = error_line(result, "grid")
    assert result.returncode == 130 and "interrupted by SIGINT" in line, result.output[-3000:]
    assert list(claims_folder.rglob("*.json")) == []  # released
    statuses = run_statuses(grid_server)
    assert running(statuses) == [] and "FAILED" in {status for _, status, _ in statuses}, statuses
    assert not (repo / "runs").exists() and half_written(repo) == []  # nothing restored half-way

    rerun = sonotune(repo, "grid", "--engine", "local", "--scratch", str(tmp_path / "scratch"), env=env)
    assert rerun.returncode == 0, rerun.output[-3000:]
    assert rerun.stdout.strip().splitlines()[-1].startswith("1 of 1 configuration(s) done")
    assert (repo / "runs/phantom/vgg16/0/svm_metrics.json").is_file() and running(run_statuses(grid_server)) == []
    assert list(claims_folder.rglob("*.json")) == []
    record("grid-ctrl-c", "Ctrl-C (SIGINT) on `sonotune grid` while a job's finetune runs", result, line,
           "the finished folds (in the job's clone under --scratch); claims released, runs FAILED; the rerun "
           "completes", repo, command="sonotune grid --engine local")


DISK_FULL = {
    # case: (fault, command line, what must be left untouched)
    "disk-full-grid": ("`sonotune grid` with too little free disk for the study's outputs",
                       ["grid", "--engine", "local"], "everything; no `dvc repro` ran"),
    "disk-full-prepare": ("`sonotune prepare` with too little free disk for the image caches",
                          ["prepare", "--dataset", "phantom"], "the prepared dataset as it was"),
    "disk-full-finetune": ("`sonotune finetune` with too little free disk for models and features",
                           ["finetune", *CONFIG], "everything; nothing trained, no MLflow run"),
}


@pytest.mark.parametrize("case", sorted(DISK_FULL))
def test_too_little_free_disk_is_found_before_any_work(repo, case):
    """SONOTUNE_FREE_BYTES lowers the free-space reading: a full disk without filling one (a tmpfs needs root)."""
    fault, args, kept = DISK_FULL[case]
    prepared = digest_tree(repo / "prepared")
    result = sonotune(repo, *args, env=project_env(SONOTUNE_FREE_BYTES="1000000"))
    line = error_line(result, args[0])
    assert result.returncode == 2 and "need about" in line and "0.00 GB is free" in line and str(repo) in line
    assert digest_tree(repo / "prepared") == prepared and "dvc repro" not in result.stdout
    assert not (repo / "runs").exists() and not (repo / ".sonotune").exists() and half_written(repo) == []
    assert running(local_statuses(repo)) == []
    record(case, fault, result, line, kept, repo)


def test_a_bad_alias_is_named_as_such(repo):
    result = sonotune(repo, "promote", "sonotune-phantom", "1", "--alias", "bad alias!")
    line = error_line(result, "promote")
    assert result.returncode == 2 and "'bad alias!'" in line and "finished folds" not in line
    assert "MLflow" not in line
    record("promote-bad-alias", "`sonotune promote --alias \"bad alias!\"`", result, line, "the registry", repo)


PORTS = {
    # case: (fault, command, words of the line)
    "server-port-out-of-range": ("`sonotune server --port 70000`", ["server", "--store", "store", "--port", "70000"],
                                 "1 to 65535"),
    "server-host-unresolvable": ("`sonotune server --host no.such.host.invalid`",
                                 ["server", "--store", "store", "--host", "no.such.host.invalid"],
                                 "not an address of this machine"),
    "serve-port-out-of-range": ("`sonotune serve MODEL --port 70000`", ["serve", "model", "--port", "70000"],
                                "1 to 65535"),
    "server-store-is-a-file": ("`sonotune server --store` naming a file", ["server", "--store", "params.yaml"],
                               "not a folder"),
    "server-store-in-proc": ("`sonotune server --store /proc/…`", ["server", "--store", "/proc/sonotune-store"],
                             "no server was started"),
}


@pytest.mark.parametrize("case", sorted(PORTS))
def test_an_address_a_server_cannot_listen_on_is_one_line(repo, case):
    fault, args, named = PORTS[case]
    result = sonotune(repo, *args)
    line = error_line(result, args[0])
    assert result.returncode == 2 and named in line and "port is in use" not in line
    assert "another server is using the port" not in line and not (repo / "store").exists()
    record(case, fault, result, line, "everything; no server started", repo)


def test_a_quota_hit_while_writing_outputs_is_one_line_and_keeps_the_old_ones(repo):
    before = digest_tree(repo / "prepared")
    started = time.monotonic()
    done = subprocess.run(["bash", "-c", f"ulimit -f 40; exec {SONOTUNE} prepare --dataset phantom"], cwd=repo,
                          env=project_env(), capture_output=True, text=True, timeout=600)
    from tests.faults import Result

    result = Result(["sonotune", "prepare", "--dataset", "phantom"], done.returncode, done.stdout, done.stderr,
                    time.monotonic() - started)
    line = error_line(result, "prepare")
    assert result.returncode == 2 and "cannot write" in line and "ulimit -f" in line
    assert digest_tree(repo / "prepared") == before and half_written(repo) == []
    assert not list((repo / "prepared").glob(".*"))
    record("write-quota-exceeded", "a file-size quota hit while writing outputs (`ulimit -f 40`, 40 KB)", result,
           line, "the previous prepared/phantom; no staging folder", repo,
           command="(ulimit -f 40; sonotune prepare --dataset phantom)")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can make a folder unreplaceable (chattr +i)")
def test_an_output_folder_that_cannot_be_replaced_is_one_line(repo, locked):
    target = repo / "prepared" / "phantom"
    before = digest_tree(target)
    read_only(target)
    locked.append(target)
    result = sonotune(repo, "prepare", "--dataset", "phantom")
    line = error_line(result, "prepare")
    assert result.returncode == 2 and "cannot replace it" in line and "prepared/phantom" in line
    assert digest_tree(target) == before and not list((repo / "prepared").glob(".*"))
    record("output-not-replaceable", "an output folder that cannot be replaced (`chattr +i prepared/phantom`)", result,
           line, "the previous prepared/phantom; no `.staging` folder left", repo)


# ---------------------------------------------------------------------------------------------------- model server


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory) -> Path:
    """A real deployable model (untrained VGG16 at 32 px, MLP head) saved as an MLflow pyfunc folder."""
    import mlflow

    from sonotune.serving import ImageModelPyfunc, write_artifacts

    root = tmp_path_factory.mktemp("model")
    artifacts = write_artifacts(tiny_model, root)
    mlflow.pyfunc.save_model(root / "model", python_model=ImageModelPyfunc(), artifacts=artifacts)
    return root / "model"


@pytest.fixture(scope="module")
def model_server(model_dir, tmp_path_factory):
    """`sonotune serve` on a free 127.0.0.1 port: (url, process, log path); the process group is killed after."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    port = free_port()
    with log.open("w") as out:
        process = subprocess.Popen([SONOTUNE, "serve", str(model_dir), "--port", str(port)], stdout=out,
                                   stderr=subprocess.STDOUT, env=project_env(), start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log)
        yield url, process, log
    finally:
        _kill_group(process)


def png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def invoke(url: str, items: list[str]):
    """POST one `image` column to /invocations; (HTTP status, JSON answer, seconds)."""
    import requests

    started = time.monotonic()
    answer = requests.post(f"{url}/invocations", json={"dataframe_split": {"columns": ["image"],
                                                                           "data": [[item] for item in items]}},
                           timeout=60)
    return answer.status_code, answer.json(), time.monotonic() - started


def rss_kib(pid: int) -> int:
    return sum(int(Path(f"/proc/{p}/status").read_text().split("VmRSS:")[1].split()[0])
               for p in live_pids_in_group(pid))


def served(case: str, fault: str, request: str, status: int, answer: dict, seconds: float, kept: str) -> None:
    from tests.faults import Result

    assert set(answer) == {"error_code", "message"}, answer
    assert "Traceback" not in answer["message"] and "File \"" not in answer["message"] and len(answer["message"]) <= 300
    record(case, fault, Result([], status, "", "", seconds), answer["message"], kept,
           command=f"POST /invocations {request}")


def test_the_model_server_scores_image_bytes(model_server):
    import base64

    url, _, _ = model_server
    image = base64.b64encode(png_bytes(Image.fromarray(np.full((40, 50), 90, np.uint8)))).decode()
    status, answer, _ = invoke(url, [image])
    assert status == 200 and 0 <= answer["predictions"][0]["probability"] <= 1, answer


def test_the_model_server_never_opens_a_path(model_server, model_dir):
    url, _, _ = model_server
    existing, missing = str(model_dir / "MLmodel"), str(model_dir / "no-such-file")
    (status, answer, seconds), (status_missing, answer_missing, _) = invoke(url, [existing]), invoke(url, [missing])
    assert status == status_missing == 400
    # the same answer whether the path exists or not: a caller learns nothing about the server's files
    assert answer["message"].replace(existing, "P") == answer_missing["message"].replace(missing, "P")
    assert "paths are never opened" in answer["message"]
    served("serve-path-instead-of-image", "a request naming a server-side file instead of sending an image",
           '{"image": "<a file of the server>"}', status, {**answer, "message": normalize_path(answer, existing)},
           seconds, "the server's files: never opened, existing or not")


def normalize_path(answer: dict, path: str) -> str:
    return answer["message"].replace(path, "<a file of the server>")


def test_the_model_server_refuses_a_decompression_bomb_before_decoding(model_server):
    import base64

    url, process, _ = model_server
    bomb = png_bytes(Image.new("L", (7200, 7200), 0))  # 50 KB that would decode to 52 Mpx
    before = rss_kib(process.pid)
    status, answer, seconds = invoke(url, [base64.b64encode(bomb).decode()])
    assert status == 400 and "decode limit" in answer["message"]
    assert rss_kib(process.pid) - before < 100_000, "the bomb was decoded"
    served("serve-decompression-bomb", f"a {len(bomb) // 1000} KB PNG declaring 7200×7200 px", "(base64 PNG)", status,
           answer, seconds, "the server (the image is refused from its header)")


def test_the_model_server_answers_errors_without_a_stack_trace(model_server):
    import requests

    url, _, log = model_server
    status, answer, seconds = invoke(url, ["bm90IGFuIGltYWdl"])
    assert status == 400 and "not an image" in answer["message"]
    served("serve-not-an-image", "bytes that are not an image", '{"image": "<base64 of text>"}', status, answer,
           seconds, "the server")
    started = time.monotonic()
    broken = requests.post(f"{url}/invocations", data=b"{not json", headers={"Content-Type": "application/json"},
                           timeout=60)
    assert broken.status_code == 400 and "stack_trace" not in broken.text and "Traceback" not in broken.text
    served("serve-body-not-json", "a request body that is not JSON", "{not json", broken.status_code,
           broken.json(), time.monotonic() - started, "the server; MLflow's stack trace only in the server's log")
    assert "HTTP 400: " in log.read_text(), "the full error answer goes to the server's log"


def _raw_post(url: str, headers: bytes, body_chunks) -> tuple[bytes, float]:
    """Send a POST by hand (a body larger than the bound, declared or streamed); what the server answered, if
    anything before closing the connection."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    answer = b""
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        try:
            connection.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                               + headers + b"Connection: close\r\n\r\n")
            for chunk in body_chunks:
                connection.sendall(chunk)
            connection.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server stopped reading at the bound and closed the connection
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, time.monotonic() - started


def test_the_model_server_bounds_the_upload(model_server):
    from tests.faults import Result

    from sonotune.serving import MAX_REQUEST_BYTES

    url, process, log = model_server
    before = rss_kib(process.pid)
    answer, seconds = _raw_post(url, f"Content-Length: {200 * 2**20}\r\n".encode(), [b"x" * 2**20] * 4)
    assert answer.startswith(b"HTTP/1.1 413") and b"REQUEST_TOO_LARGE" in answer, answer[:300]
    message = answer.split(b"\r\n\r\n", 1)[1].decode()
    assert rss_kib(process.pid) - before < 50_000 and seconds < 10
    served("serve-upload-too-large", "a 200 MB upload (declared)", "(200 MB body)", 413,
           __import__("json").loads(message), seconds, "the server: it never reads the body")

    chunk = b"x" * 2**20
    chunks = MAX_REQUEST_BYTES // 2**20 + 8
    streamed = [b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(chunks)] + [b"0\r\n\r\n"]
    answer, seconds = _raw_post(url, b"Transfer-Encoding: chunked\r\n", streamed)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert "refused a streamed request body" in log.read_text() and rss_kib(process.pid) - before < 100_000
    line = next(line for line in log.read_text().splitlines() if "refused a streamed request body" in line)
    record("serve-upload-streamed-too-large", "a 40 MB upload streamed without a length (chunked)",
           Result([], 413, "", "", seconds), "413 or the connection closed at the bound; the server log: "
           + re.sub(r"at \d+ bytes", "at <n> bytes", line.split(": ", 1)[1]),
           "the server: it stops reading at the bound", command="POST /invocations (chunked body)")
    status, _, _ = invoke(url, ["bm90IGFuIGltYWdl"])
    assert status == 400 and process.poll() is None, "the server must keep serving after refusing uploads"


def test_predict_skips_a_decompression_bomb_and_writes_the_good_rows(repo, model_dir, tmp_path):
    noise_png(tmp_path / "good.png", 3)
    Image.new("L", (7200, 7200), 0).save(tmp_path / "bomb.png")
    out = tmp_path / "predictions.csv"
    result = sonotune(repo, "predict", str(model_dir), str(tmp_path / "good.png"), str(tmp_path / "bomb.png"),
                      "--out", str(out))
    assert result.returncode == 2 and "Traceback" not in result.output, result.output[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("sonotune predict: skipped ")]
    assert len(lines) == 1 and "bomb.png" in lines[0] and "decode limit" in lines[0]
    assert len(out.read_text().splitlines()) == 2
    record("predict-decompression-bomb", "`sonotune predict` with a decompression bomb among good images", result,
           lines[0], "the predictions of the good images (CSV written)", repo)


def test_predict_to_an_unwritable_place_stops_before_predicting(repo, model_dir, tmp_path, locked):
    noise_png(tmp_path / "good.png", 3)
    folder = tmp_path / "locked"
    folder.mkdir()
    read_only(folder)
    locked.append(folder)
    result = sonotune(repo, "predict", str(model_dir), str(tmp_path / "good.png"), "--out",
                      str(folder / "predictions.csv"))
    line = error_line(result, "predict")
    assert result.returncode == 2 and "nothing was predicted" in line and "predicting" not in result.stderr
    assert list(folder.iterdir()) == []
    record("predict-out-unwritable", "`sonotune predict --out` in a folder that cannot be written", result, line,
           "everything; checked before the model loads", repo)


# ---------------------------------------------------------------------------------------------------- the table


CASES = (
    sorted(BAD_PARAMS) + sorted(STAGE_ARGS) + ["not-prepared"] + sorted(BAD_DATASETS) + sorted(EXCLUDED)
    + ["image-corrupt-strict"] + sorted(UNREAD) + ["csv-path-outside-root"] + sorted(UNWRITABLE) + sorted(STORES)
    + sorted(CACHES) + sorted(SIGNALS) + ["sigterm-to-dvc-repro"] + sorted(SERVER_DOWN)
    + ["queue-without-server", "server-lost-mid-stage", "server-hangs-mid-stage", "server-port-in-use",
       "promote-unknown-model", "promote-without-version", "predict-unreadable-image", "predict-unknown-model",
       "dvc-checkout-force-fresh-clone", "two-dvc-repro-at-once", "dvc-repro-fails", "params-duplicate-key"]
    + sorted(BACKENDS) + ["grid-ray-address-refused", "grid-ray-start-cluster"] + sorted(GRID_REFUSALS)
    + ["grid-ctrl-c"] + sorted(DISK_FULL)
    + ["promote-bad-alias"] + sorted(PORTS)
    + ["serve-path-instead-of-image", "serve-decompression-bomb", "serve-not-an-image", "serve-body-not-json",
       "serve-upload-too-large", "serve-upload-streamed-too-large", "predict-decompression-bomb",
       "predict-out-unwritable", "write-quota-exceeded", "output-not-replaceable"] + list(RESUME_DAMAGE)
)


def test_docs_failures_md_is_what_the_suite_produced():
    """Runs last: docs/failures.md must equal the table of the cases above (regenerate: SONOTUNE_WRITE_FAILURES=1)."""
    unlisted = sorted(set(ROWS) - set(CASES))
    assert not unlisted, f"recorded cases missing from CASES (so from docs/failures.md): {unlisted}"
    missing = [case for case in CASES if case not in ROWS]
    if missing:
        pytest.skip(f"only part of the fault suite ran ({len(missing)} cases missing): run the whole file")
    times = ", ".join(f"{case} {SECONDS[case]:.1f}s" for case in sorted(SECONDS, key=SECONDS.get, reverse=True))
    print(f"\n{len(CASES)} cases; time to surface, slowest first: {times}")
    text = render(list(CASES))
    if os.environ.get("SONOTUNE_WRITE_FAILURES"):
        DOC.write_text(text)
    assert DOC.read_text() == text, "docs/failures.md is stale: SONOTUNE_WRITE_FAILURES=1 pytest tests/test_faults.py"
