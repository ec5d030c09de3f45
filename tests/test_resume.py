"""FoldStore: finished folds survive a restart, a changed configuration discards them."""

import numpy as np

from sonotune.resume import FoldStore, fingerprint


def test_finished_folds_survive_and_a_new_fingerprint_discards_them(tmp_path):
    root = tmp_path / ".sonotune" / "resume" / "d" / "b" / "15" / "mlp"
    store = FoldStore.open(root, fingerprint({"lr": 1e-4}))
    store.set_parent_run_id("parent-1")
    store.save_fold((0, 0), {"run_id": "child-0", "seconds": 1.5}, {"score": np.array([0.2, 0.9])})
    (root / "fold_1.npz").write_bytes(b"half-written")  # a fold killed before its record: not done

    again = FoldStore.open(root, fingerprint({"lr": 1e-4}))
    assert again.parent_run_id == "parent-1" and again.discarded_parent_run_id is None
    assert list(again.done()) == [(0, 0)] and again.done()[(0, 0)]["run_id"] == "child-0"
    np.testing.assert_array_equal(again.load_arrays((0, 0))["score"], [0.2, 0.9])

    changed = FoldStore.open(root, fingerprint({"lr": 1e-3}))
    assert changed.discarded_parent_run_id == "parent-1"
    assert changed.parent_run_id is None and changed.done() == {}

    changed.clear()
    assert not (tmp_path / ".sonotune").exists()  # empty parents go too


def test_keep_only_model(tmp_path):
    store = FoldStore.open(tmp_path / "s", "k")
    for key in [(0, 0), (0, 1), (1, 1)]:
        store.model_path(key).write_bytes(b"m")
    store.keep_only_model((1, 1))
    assert sorted(p.name for p in (tmp_path / "s").glob("*.keras")) == ["model_repeat1_fold_1.keras"]


def test_folds_are_keyed_by_repeat_and_fold(tmp_path):
    """Fold k of repeat 0 and of repeat 1 are different folds: both persist, each with its own arrays."""
    root = tmp_path / "s"
    store = FoldStore.open(root, "k")
    store.save_fold((1, 0), {"run_id": "r1f0"}, {"score": np.array([1.0])})
    store.save_fold((0, 0), {"run_id": "r0f0"}, {"score": np.array([0.0])})
    store.save_fold((0, 2), {"run_id": "r0f2"}, {"score": np.array([2.0])})
    (root / "repeat1_fold_1.npz").write_bytes(b"half-written")  # killed before its record: not done

    again = FoldStore.open(root, "k")
    assert list(again.done()) == [(0, 0), (0, 2), (1, 0)]  # sorted by (repeat, fold)
    assert again.done()[(1, 0)]["run_id"] == "r1f0" and again.done()[(1, 0)]["repeat"] == 1
    assert [again.load_arrays(key)["score"][0] for key in again.done()] == [0.0, 2.0, 1.0]


def test_fingerprint_is_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
