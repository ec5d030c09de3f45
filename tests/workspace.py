"""A throw-away copy of the repository with a tiny study, and running commands in it: shared by the tests
(through conftest's fixtures) and the benchmarks that time the pipeline on the tests' tiny study."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
BIN = Path(sys.executable).parent


def tiny_params(**overrides) -> dict:
    """The repo's params.yaml shrunk to seconds: 36 phantom images at 32 px, vgg16, 3 folds, 2 epochs, random init
    (`finetune.weights=PRETRAINED` to start from the tiny pretrain stage's backbone)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["study"] = {"datasets": ["phantom"], "backbones": ["vgg16"], "strategies": [0, 15]}
    params["datasets"]["phantom"].update(n_benign=24, n_malignant=12, image_size=64)
    params["cv"]["n_splits"] = 3
    params["finetune"].update(input_size=32, epochs=2, weights=None)  # random init: no pretrain stage needed
    params["pretrain"].update(n_images=16, image_size=64, epochs=1)  # dvc repro still runs it: seconds
    params["svm"]["inner_splits"] = 3
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = params
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params


PRETRAINED = "prepared/pretrain/{backbone}.weights.h5"  # the pretrain stage's backbones, as finetune.weights


def project_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


IMPORT_RECORDER = Path(__file__).parent / "import_recorder"


def recording_env(log_dir: Path, **extra: str) -> dict:
    """project_env under which every `sonotune` process logs the package files it imported to `log_dir`
    (tests/import_recorder/sitecustomize.py)."""
    return project_env(PYTHONPATH=str(IMPORT_RECORDER), SONOTUNE_IMPORT_LOG=str(log_dir), **extra)


def run(cmd: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env or project_env(), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


GENERATED = ("runs/", "prepared/", "reports/", "dvc.lock")  # results of a local `make demo`, never copied


def write_phantom_data(repo: Path) -> None:
    """What `make data` does on a machine with no DVC remote, for the workspace's own params: its phantom set
    written to data/phantom and recorded in data.dvc and DVC's cache (a tiny study's set is not the demo's)."""
    from dvc.repo import Repo

    from sonotune.config import load_params
    from sonotune.data.phantom import configured_phantom, write_phantom_dataset
    from sonotune.errors import ConfigError

    try:
        params = load_params(repo / "params.yaml")
    except ConfigError:  # a test's deliberately bad params.yaml: `make data` would stop on it too, writing nothing
        return
    source = configured_phantom(params.datasets, "phantom")
    write_phantom_dataset(repo / source.root, source, params.seed)
    with Repo(str(repo)) as dvc:  # `dvc commit -f data.dvc`, in this process: no second of CLI start-up per copy
        dvc.commit(str(repo / "data.dvc"), force=True)


def copy_repo(dest: Path, params: dict, data: bool = True) -> Path:
    """Copy the project's tracked and untracked-but-not-ignored files into a new git repo at `dest`, with its phantom
    set in data/ (write_phantom_data; `data=False`: none, as on a fresh clone of the demo)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for rel in filter(None, listed):
        source = ROOT / rel
        local_data = rel.startswith("data/") and rel != "data/.gitignore"  # datasets of this checkout: not the copy's
        if source.is_file() and not rel.startswith(GENERATED) and not local_data:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / rel)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=sonotune-tests", "-c", "user.email=tests@localhost"]
    run(["git", "init", "-q"], dest)
    if data:
        write_phantom_data(dest)
    run(git + ["add", "-A"], dest)
    run(git + ["commit", "-qm", "tiny study"], dest)
    return dest
