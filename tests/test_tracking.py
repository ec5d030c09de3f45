"""MLflow conventions against a real SQLite store: tags, resuming a parent, cleaning up after a crash."""

import json

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from sonotune import tracking
from sonotune.data.prepared import dataset_info, dataset_info_if_prepared


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    yield tmp_path
    while mlflow.active_run():
        mlflow.end_run()
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exported it


def _crashed_parent(fingerprint: str, n_children: int = 1, user: str | None = None) -> tuple[str, list[str]]:
    """A parent and children left RUNNING, as after kill -9 (runs started, never ended), by `user` (default: us)."""
    client = MlflowClient(tracking.configure())
    experiment_id = tracking.ensure_experiment("toy")
    tags = {tracking.FINGERPRINT_TAG: fingerprint, "fold": "all", "mlflow.user": user or tracking._mlflow_user()}
    parent = client.create_run(experiment_id, tags=tags)
    children = [
        client.create_run(experiment_id, tags=tags | {"fold": str(k), "mlflow.parentRunId": parent.info.run_id})
        for k in range(n_children)
    ]
    return parent.info.run_id, [c.info.run_id for c in children]


def test_parent_run_is_tagged_and_resumed_by_id(store):
    (store / "prepared").mkdir()
    (store / "prepared" / "toy.json").write_text(json.dumps({
        "source": "phantom", "digest": "abc123", "n_images": 12, "per_class": {"benign": 8, "malignant": 4},
        "n_groups": 12, "n_excluded": 0, "n_duplicate_groups": 0}))
    extra = tracking.dataset_tags(dataset_info("toy", store / "prepared")) | {tracking.FINGERPRINT_TAG: "fp"}
    with tracking.parent_run("toy", "vgg16", 15, "mlp", "paper", {"a": 1}, extra_tags=extra) as run:
        first = run.info.run_id
        with tracking.fold_run(run, 0) as child:
            child_tags, child_id = child.data.tags, child.info.run_id
    with tracking.parent_run("toy", "vgg16", 15, "mlp", "paper", {"a": 1}, run_id=first, extra_tags=extra) as run:
        assert run.info.run_id == first
    client = MlflowClient()
    runs = client.search_runs([tracking.ensure_experiment("toy")])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    parent = client.get_run(first)
    expected = {"dataset": "toy", "backbone": "vgg16", "strategy": "15", "classifier": "mlp", "protocol": "paper",
                "fold": "all", "dvc_exp": "exp-1", "dataset_digest": "abc123", "dataset_n_images": "12",
                "dataset_n_malignant": "4", "dataset_source": "phantom"}
    assert parent.data.tags.items() >= expected.items()
    assert parent.data.params == {"a": "1", "config.backbone": "vgg16", "config.classifier": "mlp",
                                  "config.strategy": " 15 %"}
    assert parent.info.run_name == "vgg16-15-mlp@exp-1"  # the DVC experiment's name
    assert client.get_run(child_id).info.run_name == "vgg16-15-mlp@exp-1-fold0"
    assert child_tags["fold"] == "0" and child_tags["mlflow.parentRunId"] == first
    assert child_tags["dataset_digest"] == "abc123" and child_tags[tracking.FINGERPRINT_TAG] == "fp"


def test_dataset_tags_absent_without_report(store):
    assert tracking.dataset_tags(dataset_info_if_prepared("nothing", store / "prepared")) == {}


def test_stale_runs_of_the_same_configuration_are_failed(store):
    stale, stale_children = _crashed_parent("same", n_children=2)
    other, _ = _crashed_parent("other")
    keep, _ = _crashed_parent("same", n_children=0)
    teammates, _ = _crashed_parent("same", n_children=0, user="a-teammate")
    failed = tracking.fail_stale_runs("toy", "same", keep=keep)
    assert sorted(failed) == sorted([stale, *stale_children])
    client = MlflowClient()
    assert client.get_run(stale).info.status == "FAILED"
    assert client.get_run(teammates).info.status == "RUNNING"  # maybe alive on another machine: not ours to end
    assert client.get_run(other).info.status == "RUNNING"  # another configuration (or a live process)
    assert client.get_run(keep).info.status == "RUNNING"


def test_fail_run_tree_and_discard_unfinished_folds(store):
    parent, (done, interrupted) = _crashed_parent("fp", n_children=2)
    client = MlflowClient()
    client.set_terminated(done, "FINISHED")
    discarded = tracking.discard_unfinished_folds(client.get_run(parent), keep={done})
    assert discarded == [interrupted]
    gone = client.get_run(interrupted)
    assert gone.info.status == "FAILED" and gone.info.lifecycle_stage == "deleted"
    assert client.get_run(done).info.lifecycle_stage == "active"
    assert tracking.resumable_run_id(interrupted) is None and tracking.resumable_run_id(parent) == parent

    tracking.fail_run_tree(parent)
    assert client.get_run(parent).info.status == "FAILED"
    assert client.get_run(done).info.status == "FINISHED"
    assert tracking.resumable_run_id("0" * 32) is None


def test_two_workers_creating_the_experiment_at_once_share_it(store, monkeypatch):
    """The DVC queue starts workers together (tests/test_team.py runs two): a create that loses the race to a real
    store takes the winner's experiment. Here the loser's look-up is replayed from before the winner's create."""
    import mlflow

    winner = mlflow.create_experiment(tracking.experiment_name("raced"))
    looked_up = []
    real_lookup = mlflow.get_experiment_by_name

    def before_the_winner_then_real(name):
        looked_up.append(name)
        return None if len(looked_up) == 1 else real_lookup(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", before_the_winner_then_real)
    assert tracking.ensure_experiment("raced") == winner


def test_run_names_are_unique_per_experiment(store, monkeypatch):
    """Under `dvc exp run` the name carries the experiment's; a name already taken (a rerun) gets #2, #3."""
    names = []
    for exp in ("exp-1", "exp-1", "", ""):
        monkeypatch.setenv("DVC_EXP_NAME", exp)
        with tracking.parent_run("toy", "vgg16", 0, "svm", "paper", {}) as run:
            names.append(run.info.run_name)
    assert names == ["vgg16-0-svm@exp-1", "vgg16-0-svm@exp-1#2", "vgg16-0-svm", "vgg16-0-svm#2"]


def test_experiment_description_says_how_to_filter_and_keeps_a_users_edit(store):
    client = MlflowClient(tracking.configure())
    experiment_id = tracking.ensure_experiment("toy")
    note = client.get_experiment(experiment_id).tags[tracking.NOTE_TAG]
    assert "tags.fold = 'all'" in note and tracking.HEADLINE in note and tracking.PARENT_VIEW in note
    client.set_experiment_tag(experiment_id, tracking.NOTE_TAG, "our own notes")
    tracking.ensure_experiment("toy")
    assert client.get_experiment(experiment_id).tags[tracking.NOTE_TAG] == "our own notes"


def test_configuration_params_sort_first_and_the_headline_is_logged_first(store):
    """MLflow's compare view opens on the first three differing params in sorted order and on the first metric the
    first run logged (MLflow 3.17, ParallelCoordinatesPlotPanel): the configuration and the headline."""
    params = {"cv.n_splits": 5, "dataset": "toy", "finetune.epochs": 3, "protocol": "paper", "seed": 1,
              "svm.c_grid": "[1.0]"}
    with tracking.parent_run("toy", "resnet50", 15, "svm", "paper", params) as run:
        tracking.log_summary({"accuracy_mean": 0.5, "auc_mean": 0.61234, "auc_sd": 0.1})
    assert sorted(MlflowClient().get_run(run.info.run_id).data.params)[:3] == list(tracking.CONFIG_PARAMS)
    metrics = MlflowClient().get_run(run.info.run_id).data.metrics
    assert list(metrics)[0] == tracking.HEADLINE
    assert metrics["auc_mean"] == 0.61234  # the full value, under one name
    assert not [name for name in metrics if name.startswith("auc_mean_")]


def test_strategy_labels_are_categories_in_numeric_order():
    """The compare view draws a param whose values are not numbers (JS `Number(v)` is NaN) as a category axis with
    its values in text order."""
    labels = [tracking.strategy_label(s) for s in (0, 15, 25, 50, 75, 85, 100)]
    assert sorted(labels) == labels
    for label in labels:
        with pytest.raises(ValueError):
            float(label)


def test_experiments_open_as_model_training_with_a_saved_parent_runs_view(store):
    """MLflow 3's UI opens an experiment without `mlflow.experimentKind` on GenAI traces; the runs table loads the
    view saved in `mlflow.sharedViewState.<key>` from `?viewStateShareKey=<key>`."""
    import json

    client = MlflowClient(tracking.configure())
    experiment_id = tracking.ensure_experiment("toy")
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(tags[f"mlflow.sharedViewState.{tracking.PARENT_VIEW}"])
    assert view["searchFilter"] == "tags.fold = 'all'" and view["orderByKey"] == "metrics.`auc_mean`"
    assert view["selectedColumns"][:3] == [f"params.`{name}`" for name in tracking.CONFIG_PARAMS]
    assert "metrics.`auc_ci_low`" in view["selectedColumns"]
    url = tracking.runs_table_url("http://127.0.0.1:5000/", experiment_id)
    assert url == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?viewStateShareKey=parent-runs"


def test_dataset_input_fills_the_datasets_column(store):
    import pandas as pd

    manifest = pd.DataFrame({"path": ["a.png", "b.png"], "group": ["1", "2"], "label": ["benign", "malignant"],
                             "other": [0, 1]})
    with tracking.parent_run("toy", "vgg16", 0, "mlp", "paper", {}) as run:
        tracking.log_dataset(manifest, {"digest": "abc123"}, "toy")
    inputs = MlflowClient().get_run(run.info.run_id).inputs.dataset_inputs
    assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("toy", "abc123")]
    assert inputs[0].tags[0].value == "training"


def test_a_logged_model_is_named_and_tagged_like_its_run(store):
    run = type("Run", (), {})()
    run.info = type("Info", (), {"run_name": "vgg16-15-svm@exp.1-fold0", "run_id": "r1"})()
    run.data = type("Data", (), {"tags": {"backbone": "vgg16", "fold": "0", "git_commit": "x", "mlflow.user": "u"}})()
    assert tracking.model_name(run) == "vgg16-15-svm@exp_1-fold0"  # MLflow refuses '.' in model names
    assert tracking.model_tags(run) == {"backbone": "vgg16", "fold": "0", "run_name": "vgg16-15-svm@exp.1-fold0",
                                        "source_run_id": "r1"}


def test_the_svm_parent_copies_the_finetune_record(tmp_path):
    tracking.write_record(tmp_path, {"finetune.epochs": 3, "config.backbone": "x"}, {"dataset_digest": "d",
                                                                                        tracking.FINGERPRINT_TAG: "f"})
    record = tracking.read_record(tmp_path)
    assert record["tags"]["dataset_digest"] == "d" and record["params"]["finetune.epochs"] == 3
    assert tracking.read_record(tmp_path / "nothing") is None
    assert tracking.derived_fingerprint("f", {"svm.x": 1}) != tracking.derived_fingerprint("f", {"svm.x": 2})


PARALLEL_LOGGER = """
import sys, time
import pandas as pd
from sonotune import tracking
start = float(sys.argv[1])
manifest = pd.DataFrame({"path": ["a.png", "b.png"], "group": ["1", "2"], "label": ["benign", "malignant"]})
with tracking.parent_run("toy", "vgg16", int(sys.argv[2]), "mlp", "paper", {}):
    time.sleep(max(0.0, start - time.time()))
    tracking.log_dataset(manifest, {"digest": "same-digest"}, "toy")
"""


def test_parallel_jobs_logging_one_dataset_do_not_collide(tmp_path):
    """Jobs of a grid log the same dataset at once into one server: the store's look-up-then-insert races
    (`UNIQUE constraint failed: datasets…`); every job must still log it and finish."""
    import subprocess
    import sys
    import time

    from tests.servers import mlflow_server
    from tests.workspace import project_env

    jobs = 8
    with mlflow_server(tmp_path / "server") as uri:
        env = project_env(MLFLOW_TRACKING_URI=uri)
        tracking_env = {**env, "PYTHONPATH": str(tracking.Path(tracking.__file__).parents[1])}
        start = time.time() + 20  # every job is connected and inside its run before this instant
        procs = [subprocess.Popen([sys.executable, "-c", PARALLEL_LOGGER, str(start), str(k)], cwd=tmp_path,
                                  env=tracking_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for k in range(jobs)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        assert [p.returncode for p in procs] == [0] * jobs, "\n".join(outputs)
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name(tracking.experiment_name("toy")).experiment_id])
    assert len(runs) == jobs and {r.info.status for r in runs} == {"FINISHED"}
    assert all([i.dataset.digest for i in r.inputs.dataset_inputs] == ["same-digest"] for r in runs)
