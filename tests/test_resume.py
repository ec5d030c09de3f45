"""FoldStore: finished folds survive a restart, a changed configuration discards them."""

import numpy as np

from sonotune.resume import FoldStore, fingerprint


def test_finished_folds_survive_and_a_new_fingerprint_discards_them(tmp_path):
    root = tmp_path / ".sonotune" / "resume" / "d" / "b" / "15" / "mlp"
    store = FoldStore.open(root, fingerprint({"lr": 1e-4}))
    store.set_parent_run_id("parent-1")
    store.save_fold(0, {"run_id": "child-0", "seconds": 1.5}, {"score": np.array([0.2, 0.9])})
    (root / "fold_1.npz").write_bytes(b"half-written")  # a fold killed before its record: not done

    again = FoldStore.open(root, fingerprint({"lr": 1e-4}))
    assert again.parent_run_id == "parent-1" and again.discarded_parent_run_id is None
    assert list(again.done()) == [0] and again.done()[0]["run_id"] == "child-0"
    np.testing.assert_array_equal(again.load_arrays(0)["score"], [0.2, 0.9])

    changed = FoldStore.open(root, fingerprint({"lr": 1e-3}))
    assert changed.discarded_parent_run_id == "parent-1"
    assert changed.parent_run_id is None and changed.done() == {}

    changed.clear()
    assert not (tmp_path / ".sonotune").exists()  # empty parents go too


def test_keep_only_model(tmp_path):
    store = FoldStore.open(tmp_path / "s", "k")
    for fold in range(3):
        store.model_path(fold).write_bytes(b"m")
    store.keep_only_model(1)
    assert sorted(p.name for p in (tmp_path / "s").glob("*.keras")) == ["model_fold1.keras"]


def test_fingerprint_is_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})
