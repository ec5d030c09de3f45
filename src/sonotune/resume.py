"""Per-fold checkpoints of a cross-validated stage, so a run killed mid-way resumes with the missing folds only.

A `FoldStore` is a folder `.sonotune/resume/<dataset>/<backbone>/<strategy>/<classifier>/` holding
`state.json` (the configuration's fingerprint and its MLflow parent run id), and per finished fold, keyed by
(repeat, fold) of repeated cross-validation, `<stem>.npz` (arrays) + `<stem>.json` (record), the stem being
`fold_<k>` for repeat 0 and `repeat<r>_fold_<k>` for repeat r > 0. The JSON is written last, atomically: a
fold counts as done only when its record exists. The store lives outside every DVC output on purpose: `dvc repro` deletes a
stage's outputs before rerunning it, which would throw the finished folds away. A different fingerprint
(params, data or fold plan changed) discards the store; a run that completes clears it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np

from sonotune.errors import SonotuneError

RESUME_ROOT = Path(".sonotune") / "resume"


def fingerprint(payload: object) -> str:
    """A short stable hash of a JSON-able description of a configuration."""
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resume_dir(dataset: str, backbone: str, strategy: int, classifier: str) -> Path:
    return RESUME_ROOT / dataset / backbone / str(strategy) / classifier


FoldKey = tuple[int, int]  # (repeat, fold index), as cv.Fold.key


def _stem(key: FoldKey) -> str:
    repeat, fold = key
    return f"fold_{fold}" if repeat == 0 else f"repeat{repeat}_fold_{fold}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class FoldStore:
    """Finished folds of one configuration, keyed by (repeat, fold index)."""

    def __init__(self, root: Path, key: str, state: dict, discarded_parent_run_id: str | None = None):
        """A handle on an opened store; use `FoldStore.open`, which reads, checks and creates it."""
        self.root = Path(root)
        self.key = key
        self.state = state
        self.discarded_parent_run_id = discarded_parent_run_id

    @classmethod
    def open(cls, root: Path, key: str) -> "FoldStore":
        """The store at `root` for fingerprint `key`: kept when its fingerprint matches, else discarded (params
        or data changed since the crashed run: its folds are not this configuration's) and started afresh."""
        root = Path(root)
        state = cls._read_state(root)
        discarded = None
        if state is not None and state.get("fingerprint") != key:
            discarded = state.get("parent_run_id")
            shutil.rmtree(root)
            state = None
        root.mkdir(parents=True, exist_ok=True)
        store = cls(root, key, state or {"fingerprint": key, "parent_run_id": None}, discarded)
        _write_atomic(root / "state.json", json.dumps(store.state))
        return store

    @staticmethod
    def _read_state(root: Path) -> dict | None:
        try:
            return json.loads((root / "state.json").read_text())
        except (OSError, ValueError):
            return None

    @property
    def parent_run_id(self) -> str | None:
        return self.state.get("parent_run_id")

    def set_parent_run_id(self, run_id: str) -> None:
        self.state["parent_run_id"] = run_id
        _write_atomic(self.root / "state.json", json.dumps(self.state))

    def done(self) -> dict[FoldKey, dict]:
        """Records of the finished folds, by (repeat, fold), in that order."""
        records = {}
        for path in self.root.glob("*fold_*.json"):
            try:
                record = json.loads(path.read_text())
                key = (int(record.get("repeat", 0)), int(record["fold"]))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise self._damaged(path, f"unreadable record: {type(exc).__name__}") from None
            if not (self.root / f"{_stem(key)}.npz").is_file():
                raise self._damaged(path, f"{_stem(key)}.npz is missing")
            records[key] = record
        return dict(sorted(records.items()))

    def _damaged(self, path: Path, why: str) -> SonotuneError:
        stem = path.name.removesuffix(".json")
        return SonotuneError(f"{self.root}/{stem}: a damaged finished fold in the resume store ({why}): delete "
                             f"{self.root}/{stem}.* (that fold trains again) and rerun")

    def save_fold(self, key: FoldKey, record: dict, arrays: dict[str, np.ndarray]) -> None:
        """Persist a finished fold: arrays first, then the record that marks it done."""
        stem = _stem(key)
        tmp = self.root / f"{stem}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.root / f"{stem}.npz")
        _write_atomic(self.root / f"{stem}.json", json.dumps(record | {"repeat": key[0], "fold": key[1]}))

    def load_arrays(self, key: FoldKey) -> dict[str, np.ndarray]:
        path = self.root / f"{_stem(key)}.json"
        try:
            with np.load(self.root / f"{_stem(key)}.npz") as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise self._damaged(path, f"unreadable arrays: {type(exc).__name__}") from None

    def model_path(self, key: FoldKey) -> Path:
        return self.root / f"model_{_stem(key)}.keras"

    def keep_only_model(self, key: FoldKey | None) -> None:
        """Delete every saved fold model but `key`'s."""
        for path in self.root.glob("model_*.keras"):
            if key is None or path != self.model_path(key):
                path.unlink()

    def clear(self) -> None:
        """Delete the store and the folders above it that it leaves empty."""
        shutil.rmtree(self.root, ignore_errors=True)
        for parent in self.root.parents:
            try:
                parent.rmdir()
            except OSError:  # not empty (another configuration's store), or gone
                break
