"""End to end: the study's input images under DVC, as a team member gets them (docs/manual.md, Data under DVC).

data.dvc versions data/phantom, the demo's set; `make data` (the first step of `make demo`) pulls it from the
configured DVC remote or, with none, regenerates it bit for bit and fills DVC's cache. A real dataset goes under
data/<name>/ with a .dvc file of its own. Every check runs real `make`, `dvc` and `git` in throw-away clones.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.faults import digest_tree
from tests.workspace import BIN, ROOT, copy_repo, run, tiny_params

pytestmark = pytest.mark.e2e

GIT = ["git", "-c", "user.name=sonotune-tests", "-c", "user.email=tests@localhost"]
UP_TO_DATE = "Data and pipelines are up to date."


def make_data(repo: Path) -> str:
    """`make data` as a fresh clone runs it, with this test run's environment (`-o install`: already installed)."""
    return run(["make", "-s", "-o", "install", "data", f"VENV={BIN.parent}"], repo).stdout


def demo_clone(dest: Path) -> Path:
    """The repository with the demo's own params.yaml and data.dvc, committed, and no data/phantom (a fresh clone)."""
    repo = copy_repo(dest, yaml.safe_load((ROOT / "params.yaml").read_text()), data=False)
    assert not (repo / "data" / "phantom").exists()
    return repo


def manual_status_block() -> str:
    """The `dvc status` lines docs/manual.md shows for a fresh clone (Data under DVC)."""
    text = (ROOT / "docs" / "manual.md").read_text()
    section = text[text.index("**What `dvc status` says before the demo**"):]
    return section.split("```\n", 2)[1]


def recorded_hash(repo: Path) -> str:
    return yaml.safe_load((repo / "data.dvc").read_text())["outs"][0]["md5"]


def test_a_fresh_clone_regenerates_data_dvc_bit_for_bit_and_round_trips_it_through_a_remote(tmp_path):
    first = demo_clone(tmp_path / "first")
    # before the data step, `dvc status` says what the manual shows (data.dvc's folder is missing, nothing has run)
    assert run(["dvc", "status"], first).stdout.startswith(manual_status_block())

    out = make_data(first)
    assert "regenerated, the set data.dvc records, now in DVC's cache" in out, out
    assert recorded_hash(first) == recorded_hash(ROOT)  # the md5 data.dvc records is what the generator writes
    assert run(["git", "status", "--porcelain"], first).stdout == ""  # data.dvc unchanged, data/ not in git
    assert UP_TO_DATE in run(["dvc", "status", "data.dvc"], first).stdout
    assert "data/phantom: present" in make_data(first)  # a second run leaves the folder alone

    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "--default", "team", str(remote)], first)
    run(GIT + ["commit", "-qam", "team remote"], first)
    run(["dvc", "push", "data.dvc"], first)

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    assert "pulled from the DVC remote" in make_data(second)
    assert digest_tree(second / "data" / "phantom") == digest_tree(first / "data" / "phantom")
    assert UP_TO_DATE in run(["dvc", "status", "data.dvc"], second).stdout

    # --force replaces the tracked folder with data.dvc's version: a local edit of it is discarded (docs)
    (second / "data/phantom/benign/benign_0000.png").write_bytes(b"edited")
    (second / "data/phantom/benign/extra.png").write_bytes(b"added")
    run(["dvc", "checkout", "--force", "data.dvc"], second)
    assert digest_tree(second / "data" / "phantom") == digest_tree(first / "data" / "phantom")


def test_checkout_force_on_a_fresh_clone_never_deletes_a_users_files_under_data(tmp_path):
    repo = demo_clone(tmp_path / "repo")
    mine = repo / "data" / "mine"
    mine.mkdir(parents=True)
    (mine / "scan.png").write_bytes(b"a user's image")
    (repo / "data" / "notes.txt").write_text("a user's notes")
    before = digest_tree(repo / "data")
    checkout = run(["dvc", "checkout", "--force"], repo, check=False)  # empty cache: data.dvc's folder fails
    assert digest_tree(repo / "data") == before, checkout.stderr
    assert "data/phantom" in checkout.stderr  # DVC says what it could not check out


def _mendeley_sample(source: Path, dest: Path) -> None:
    """Three clips of five frames per class (us1–us15 benign, us126–us140 malignant): real BMPs, seconds to prepare."""
    for class_name, first in (("benign", 1), ("malignant", 126)):
        (dest / class_name).mkdir(parents=True)
        for number in range(first, first + 15):
            shutil.copy2(source / class_name / f"us{number}.bmp", dest / class_name)


def test_a_real_dataset_the_dvc_way(tmp_path, shared_datasets):
    """docs/manual.md, Real datasets: data/<name>/, `dvc add`, push to the team remote, params.yaml, prepare."""
    entry = {"kind": "mendeley", "root": "data/mendeley"}
    first = copy_repo(tmp_path / "first", tiny_params(**{"datasets.mendeley": entry,
                                                         "study.datasets": ["phantom", "mendeley"]}))
    _mendeley_sample(shared_datasets / "mendeley", first / "data" / "mendeley")
    run(["dvc", "add", "data/mendeley"], first)
    run(GIT + ["add", "data/mendeley.dvc", "data/.gitignore"], first)
    assert run(["git", "status", "--porcelain", "--untracked-files=all", "data"], first).stdout.split() == [
        "M", "data/.gitignore", "A", "data/mendeley.dvc"]  # no image of the set reaches git
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "--default", "team", str(remote)], first)
    run(GIT + ["commit", "-qam", "mendeley sample under DVC"], first)
    run(["dvc", "push"], first)

    out = run(["dvc", "repro", "prepare@mendeley"], first).stdout
    assert "mendeley: 30 images {'benign': 15, 'malignant': 15}" in out, out
    assert "prepare@phantom" not in out

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    run(["dvc", "pull", "data/mendeley.dvc", "data.dvc"], second)
    assert digest_tree(second / "data" / "mendeley") == digest_tree(first / "data" / "mendeley")
    assert digest_tree(second / "data" / "phantom") == digest_tree(first / "data" / "phantom")
    assert UP_TO_DATE in run(["dvc", "status", "data.dvc", "data/mendeley.dvc"], second).stdout
