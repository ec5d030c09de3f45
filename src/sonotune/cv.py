"""Fold plans: outer grouped, stratified folds and, inside each training fold, the split that picks the epoch.

`leakage_free`: the epoch is selected on a grouped, stratified validation split carved out of the training
fold; the test fold is predicted once. `paper`: the epoch is selected on the test fold itself, as the paper
describes. The same seed gives the same folds for every backbone and strategy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


@dataclass(frozen=True)
class Fold:
    index: int
    fit: np.ndarray  # indices the network's weights are trained on
    val: np.ndarray  # indices that select the best epoch
    test: np.ndarray  # indices scored once

    @property
    def train(self) -> np.ndarray:
        """The outer training fold (fit + validation): everything but the test fold."""
        return np.union1d(self.fit, self.val) if not np.array_equal(self.val, self.test) else self.fit


def outer_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]


def validation_split(
    y: np.ndarray, groups: np.ndarray, train: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split `train` into (fit, val), grouped and stratified, val ≈ val_fraction of it."""
    n_splits = max(2, round(1 / val_fraction))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    fit, val = next(splitter.split(np.zeros(len(train)), y[train], groups[train]))
    return np.sort(train[fit]), np.sort(train[val])


def fold_plan(
    y: np.ndarray, groups: np.ndarray, protocol: str, n_splits: int, val_fraction: float, seed: int
) -> list[Fold]:
    plan = []
    for index, (train, test) in enumerate(outer_folds(y, groups, n_splits, seed)):
        if protocol == "paper":
            plan.append(Fold(index, fit=train, val=test, test=test))
        else:
            fit, val = validation_split(y, groups, train, val_fraction, seed + index)
            plan.append(Fold(index, fit=fit, val=val, test=test))
    return plan
