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


def _crashed_parent(fingerprint: str, n_children: int = 1) -> tuple[str, list[str]]:
    """A parent and children left RUNNING, as after kill -9 (runs started, never ended)."""
    client = MlflowClient(tracking.configure())
    experiment_id = tracking.ensure_experiment("toy")
    tags = {tracking.FINGERPRINT_TAG: fingerprint, "fold": "all"}
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
            child_tags = child.data.tags
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
    assert parent.data.params == {"a": "1"}
    assert child_tags["fold"] == "0" and child_tags["mlflow.parentRunId"] == first
    assert child_tags["dataset_digest"] == "abc123" and child_tags[tracking.FINGERPRINT_TAG] == "fp"


def test_dataset_tags_absent_without_report(store):
    assert tracking.dataset_tags(dataset_info_if_prepared("nothing", store / "prepared")) == {}


def test_stale_runs_of_the_same_configuration_are_failed(store):
    stale, stale_children = _crashed_parent("same", n_children=2)
    other, _ = _crashed_parent("other")
    keep, _ = _crashed_parent("same", n_children=0)
    failed = tracking.fail_stale_runs("toy", "same", keep=keep)
    assert sorted(failed) == sorted([stale, *stale_children])
    client = MlflowClient()
    assert client.get_run(stale).info.status == "FAILED"
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
