"""Docs that run: every command a ```bash block of README.md or docs/*.md shows is run here, or is matched to the
test that runs it (the test file must hold the call), or is skipped for a reason stated in SKIPPED. A command the
docs gain or lose without a line here fails the test. (Links and anchors: tests/test_docs.py.)"""

from __future__ import annotations

import re
import shlex
import shutil

import pytest

from sonotune.cli import build_parser
from tests.test_docs import DOCS
from tests.workspace import ROOT, run

# run here for real: in the shared tiny study (`demo_repro`), or in a folder of their own
RUN_IN_STUDY = ["dvc metrics show", "dvc plots show", "dvc plots diff"]
RUN_IN_FOLDER = ["sonotune params configs/paper.yaml", "sonotune inspect data/busi",
                 "sonotune inspect data/ddti --manifest ddti.csv"]

# run by another test: (test file, the call in it)
COVERED = {
    "make demo": [("tests/test_data_dvc.py", '"make", "-s", "-o", "install", "data"'),  # make demo = make data,
                  ("tests/conftest.py", 'run(["dvc", "repro"], repo')],                 # then dvc repro
    "dvc repro": [("tests/conftest.py", 'run(["dvc", "repro"], repo')],
    "dvc exp run -S finetune.epochs=6": [("tests/test_e2e.py", '["dvc", "exp", "run", "-S"')],
    "dvc exp show --only-changed --drop 'Created|runs|prepared|src|.*distinguishable|.*comparisons' --keep '.*_auc$'":
        [("tests/test_e2e.py", 'startswith("dvc exp show")')],
    "dvc exp diff": [("tests/test_e2e.py", '["dvc", "exp", "diff"]')],
    "sonotune grid --engine ray": [("tests/stages/test_grid.py", '"grid", "--engine", engine')],
    "sonotune grid --engine local": [("tests/test_faults.py", '"--engine", "local"')],
    "sonotune grid-job --origin git@git.example.org:team/sonotune.git --commit \"$(git rev-parse HEAD)\" "
    "--remote s3://team-bucket/sonotune-dvc --name phantom-vgg16-15 --stage finetune@phantom-vgg16-15 "
    "--stage svm@phantom-vgg16-15 --scratch /tmp/sonotune-grid": [("tests/test_grid_engine.py", '"sonotune", "grid-job"')],
    'sonotune grid-job --origin ~/sonotune --commit "$COMMIT" --remote /shared/sonotune-dvc --name "$name" '
    '--stage "finetune@$name" --stage "svm@$name" --scratch "$TMPDIR/sonotune-grid"':
        [("tests/test_grid_engine.py", '"sonotune", "grid-job"')],
    "sonotune phantom --dataset phantom && dvc commit data.dvc": [
        ("tests/stages/test_prepare.py", '"phantom", "--dataset"'), ("tests/workspace.py", "commit(")],
    "sonotune inspect my_listing.csv --strict": [("tests/data/test_bad_inputs.py", '"--strict"')],
    "dvc add data/busi": [("tests/test_data_dvc.py", '"dvc", "add"')],
    "dvc push data/busi.dvc": [("tests/test_data_dvc.py", '"push"')],
    "dvc repro prepare@busi": [("tests/test_data_dvc.py", '"prepare@')],
    "git pull && dvc pull data/busi.dvc": [("tests/test_data_dvc.py", '"pull"')],
    "PYTHONPATH=src python tests/test_stats_simulation.py":
        [("tests/test_stats_simulation.py", '__name__ == "__main__"')],
    "sonotune pretrain --backbone vgg16":
        [("tests/stages/test_pretrain.py", '"sonotune", "pretrain", "--backbone", "vgg16"')],
    "dvc exp show": [("tests/test_team.py", '["dvc", "exp", "show"')],
    "dvc pull": [("tests/test_team.py", '"dvc", "pull"')],
    "dvc push": [("tests/test_team.py", '"dvc", "push"')],
    "dvc remote add -d team /mnt/nas/sonotune-dvc": [("tests/test_team.py", '"remote", "add"')],  # a local folder
    "sonotune queue --jobs 2": [("tests/test_team.py", '"queue", "--jobs", "2"')],
    "dvc queue status": [("tests/test_team.py", '"dvc", "queue", "status"')],
    "dvc queue logs phantom-vgg16-15": [("tests/test_team.py", '"dvc", "queue", "logs", f"phantom-vgg16-{s}"')],
    "sonotune server --store ~/sonotune-mlflow --port 5000":
        [("tests/servers.py", '"server", "--store", str(store), "--port"')],
    "sonotune deploy --dataset busi --backbone resnet50 --strategy 15 --classifier svm":
        [("tests/stages/test_deploy.py", '"sonotune", "deploy", *CONFIG, "--classifier"')],
    "sonotune promote sonotune-busi": [("tests/stages/test_deploy.py", '"sonotune", "promote", NAME, "--alias"')],
    "sonotune promote sonotune-busi 3": [("tests/stages/test_deploy.py", '"sonotune", "promote", NAME, "1"')],
    "sonotune predict models:/sonotune-busi@champion scans/ new.png --out predictions.csv --gradcam cams/":
        [("tests/stages/test_deploy.py", '"sonotune", "predict", f"models:/{NAME}@champion"')],
    "sonotune serve models:/sonotune-busi@champion --port 5001": [("tests/test_faults.py", '[SONOTUNE, "serve", ')],
}

# not run, and why
SKIPPED = {
    "make test": "the test suite itself (CI runs it: .ci/run)",
    "source .venv/bin/activate": "a shell builtin; every test runs with .venv/bin first on PATH (project_env)",
    "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db": "a web server that runs until stopped; "
                                                                "tests/test_screenshots.py serves a store and opens it",
    'pip install "sonotune[ray]"': "needs the package index; make install installs the ray extra ([test])",
    "export MLFLOW_TRACKING_URI=http://mlflow.internal:5000": "sets a variable naming a team host that is not here",
    "ray start --head --port 6379 --dashboard-host 0.0.0.0 --num-gpus 1": "a Ray head for other machines (GPUs); "
                                                                          "tests/test_faults.py starts a local one",
    "ray start --address head.internal:6379 --num-gpus 4": "joins a Ray cluster on another machine",
    "dvc remote default team": "names the team remote the reader added (manual: A DVC remote); "
                               "tests/stages/test_grid.py sets its local remote as the default",
    'git add dvc.lock && git commit -m "grid results"': "plain git",
    'git commit -am "the study to run"': "plain git",
    'name=$(sed -n "${SLURM_ARRAY_TASK_ID}p" configurations.txt)': "SLURM job script",
    "ray job submit --address http://head.internal:8265 --no-wait -- bash -c \"cd /shared/sonotune && "
    "MLFLOW_TRACKING_URI=http://mlflow.internal:5000 sonotune grid --engine ray --memory-gb 12\"":
        "needs a Ray cluster's job server (head.internal); tests/stages/test_grid.py runs the grid on a local Ray",
    "ray job logs --address http://head.internal:8265 --follow <submission id>": "needs a Ray cluster's job server",
    "cp -r ~/Downloads/Dataset_BUSI_with_GT data/busi/": "copies the user's own download",
    'git add data/busi.dvc data/.gitignore && git commit -m "data: BUSI"': "plain git",
    "dvc remote add -d team s3://bucket/sonotune": "needs an S3 bucket; tests/test_data_dvc.py adds a local remote",
    'git add .dvc/config && git commit -m "DVC remote"': "plain git",
    'git add -A && git commit -m "study results"': "plain git",
    "git clone <repo-url> sonotune && cd sonotune && make install": "needs the project's own remote; CI runs "
                                                                    "make install on a clean clone (.ci/run)",
    "git clone <repo-url> sonotune && cd sonotune && make install && source .venv/bin/activate":
        "needs the project's own remote; CI runs make install on a clean clone (.ci/run)",
    '.venv/bin/pytest -m "not e2e"': "a part of the suite itself",
    "make bench": "a benchmark of many minutes, run by hand (docs/benchmarks.md)",
    "sonotune server --backend-store-uri postgresql://mlflow@db.internal/mlflow "
    "--artifacts-destination s3://team-bucket/mlflow --workers 4": "needs PostgreSQL and an S3 bucket; "
                                                                   "tests/test_team.py runs `sonotune server`",
    "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000": "sets a variable; the team tests set it to their server",
    "export MLFLOW_TRACKING_URI=https://mlflow.example.org": "sets a variable naming a host that is not here",
    "export RAY_ADDRESS=$head:6379 MLFLOW_TRACKING_URI=http://mlflow.internal:5000": "SLURM job script",
    'nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST")); head=${nodes[0]}': "SLURM job script",
    'srun --nodes=1 --ntasks=1 -w "$head" ray start --head --port 6379 --block &': "SLURM job script",
    'srun --nodes=$((SLURM_NNODES - 1)) --ntasks=$((SLURM_NNODES - 1)) --exclude "$head" '
    'ray start --address "$head:6379" --block &': "SLURM job script",
    "sleep 20": "SLURM job script",
    "dvc exp apply phantom-vgg16-15": "NOT RUN by any test: applies an experiment the team queue ran (test_team.py "
                                      "checks those experiments with dvc exp show)",
    "dvc push --run-cache": "run by every grid job (grid_engine.job_commands), which tests/stages/test_grid.py runs on a local remote",
    "cd ~/sonotune && sonotune grid --engine ray --scratch /shared/scratch/$USER/sonotune-grid": "SLURM job script",
    "pip install optuna-dashboard": "an optional tool, not a dependency; needs the package index",
    "optuna-dashboard sqlite:////srv/sonotune/optuna.db": "an optional tool (not installed) serving a shared study",
}


def shown_commands() -> set[str]:
    """Every command line of the docs' ```bash blocks, its comment dropped, continued lines joined."""
    found = set()
    for doc in DOCS:
        for block in re.findall(r"```(?:bash|sh)\n(.*?)```", doc.read_text(), flags=re.S):
            for line in re.sub(r"\\\n\s*", "", block).splitlines():
                command = re.sub(r"(^|\s+)#.*$", "", line).strip()
                if command:
                    found.add(command)
    return found


def test_every_shown_command_is_run_covered_or_skipped_with_a_reason():
    listed = [*RUN_IN_STUDY, *RUN_IN_FOLDER, *COVERED, *SKIPPED]
    assert len(listed) == len(set(listed))  # one answer per command
    shown = shown_commands()
    assert sorted(shown - set(listed)) == [], "commands the docs show that this file does not account for"
    assert sorted(set(listed) - shown) == [], "commands listed here that the docs no longer show"
    assert all(reason.strip() for reason in SKIPPED.values())


def test_a_command_block_without_a_language_holds_no_command():
    """A block that shows commands is a ```bash block (else the test above would not see it)."""
    starts = re.compile(r"^(sonotune|dvc|make|mlflow|pip|git|python|ray)\s+[^:]*$")
    for doc in DOCS:
        for block in re.findall(r"```\n(.*?)```", doc.read_text(), flags=re.S):
            assert not any(starts.match(line.strip()) for line in block.splitlines()), (doc.name, block[:80])


@pytest.mark.parametrize("command", sorted(COVERED))
def test_a_covered_command_is_called_by_its_test(command):
    for test_file, call in COVERED[command]:
        assert call in (ROOT / test_file).read_text(), f"{test_file} no longer holds {call!r} ({command})"


def test_every_sonotune_command_shown_parses():
    parser = build_parser()
    for command in shown_commands():
        words = shlex.split(command)  # before splitting at `&&`: a quoted `bash -c "… && …"` stays one word
        starts = [0] + [i + 1 for i, word in enumerate(words) if word == "&&"]
        for start in starts:
            if words[start:start + 1] == ["sonotune"]:
                part = words[start + 1:]
                parser.parse_args(part[:part.index("&&")] if "&&" in part else part)  # SystemExit: unknown option


def test_the_folder_commands_run(tmp_path, shared_datasets):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "paper.yaml", tmp_path / "configs" / "paper.yaml")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "busi").symlink_to(shared_datasets / "busi")
    (tmp_path / "data" / "ddti").symlink_to(shared_datasets / "ddti")
    for command in RUN_IN_FOLDER:
        run(shlex.split(command), tmp_path)
    assert "inceptionv3" in (tmp_path / "params.yaml").read_text()  # the paper's backbones laid over
    assert (tmp_path / "ddti.csv").is_file()


@pytest.mark.e2e
def test_the_study_commands_run(demo_repro):
    repo = demo_repro["repo"]
    run(["sonotune", "plots-template"], repo)  # what make install writes in a checkout: the page dvc plots fills
    try:
        for command in RUN_IN_STUDY:
            out = run(shlex.split(command), repo).stdout
            assert out.strip(), command
    finally:
        shutil.rmtree(repo / "dvc_plots", ignore_errors=True)  # what plots show/diff wrote: the study stays as it was
