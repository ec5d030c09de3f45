"""Fold plans and the protocols' rules, in one place.

Outer stratified folds (grouped or not) and, inside each training fold, the split that picks the epoch. What a
protocol changes is written once, in `RULES`, and every stage and loader asks `rules(protocol)`:
`leakage_free`: outer folds are grouped (`StratifiedGroupKFold`: a case, a clip, duplicates stay in one fold);
an image under two labels is left out; the epoch is selected on a grouped, stratified validation split carved
out of the training fold; the test fold is predicted once; the SVM's C is searched on the training fold's
features and the test fold is scored once. `paper`: the paper's conditions, all of them: ungrouped
`StratifiedKFold` outer folds (duplicates and frames of one lesion may sit on both sides), label conflicts kept
in the study, the epoch selected on the test fold itself, and the SVM tuned and scored by inner CV over every
image's features. The same seed gives the same folds for every backbone and strategy.

Repeated cross-validation (`cv.repeats: R`): repeat r is a fresh split of the same images seeded with
`repeat_seed(seed, r) = seed + REPEAT_SEED_STRIDE · r` (stride 1000, larger than any fold count, so no seed of
repeat r, `repeat_seed + fold`, is another repeat's). Repeat 0 is the single split of `cv.repeats: 1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from sonotune.vocabulary import PROTOCOLS


@dataclass(frozen=True)
class ProtocolRules:
    """What a protocol decides about selection and scoring."""

    name: str
    epoch_on_test_fold: bool  # the best epoch is picked on the test fold (no validation split)
    svm_on_all_images: bool  # C is searched on, and the SVM scored by inner CV over, every image's features
    grouped_folds: bool  # outer folds keep a group (case, clip, duplicates) together; else plain stratified
    keep_label_conflicts: bool  # an image found under two labels stays in the study under each (prepare)


RULES = {  # one entry per vocabulary.PROTOCOLS
    "leakage_free": ProtocolRules("leakage_free", epoch_on_test_fold=False, svm_on_all_images=False,
                                  grouped_folds=True, keep_label_conflicts=False),
    "paper": ProtocolRules("paper", epoch_on_test_fold=True, svm_on_all_images=True,
                           grouped_folds=False, keep_label_conflicts=True),
}


assert tuple(RULES) == PROTOCOLS


def rules(protocol: str) -> ProtocolRules:
    if protocol not in RULES:
        raise ValueError(f"protocol must be one of {', '.join(RULES)} (got {protocol!r})")
    return RULES[protocol]


REPEAT_SEED_STRIDE = 1000


def repeat_seed(seed: int, repeat: int) -> int:
    """The seed of repeat `repeat`'s split (and of its folds' training: `repeat_seed + fold`)."""
    return seed + REPEAT_SEED_STRIDE * repeat


@dataclass(frozen=True)
class Fold:
    index: int
    fit: np.ndarray  # indices the network's weights are trained on
    val: np.ndarray  # indices that select the best epoch
    test: np.ndarray  # indices scored once
    repeat: int = 0  # which split of repeated cross-validation the fold belongs to

    @property
    def key(self) -> tuple[int, int]:
        """(repeat, fold index): what names the fold in stores, runs and outputs."""
        return (self.repeat, self.index)

    @property
    def train(self) -> np.ndarray:
        """The outer training fold (fit + validation): everything but the test fold."""
        return np.union1d(self.fit, self.val) if not np.array_equal(self.val, self.test) else self.fit


def outer_folds(y: np.ndarray, groups: np.ndarray, n_splits: int, seed: int,
                grouped: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs: grouped and stratified, or (`grouped=False`, the paper's) stratified only."""
    if not grouped:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return [(np.sort(tr), np.sort(te)) for tr, te in splitter.split(np.zeros(len(y)), y)]
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
    y: np.ndarray, groups: np.ndarray, protocol: str, n_splits: int, val_fraction: float, seed: int,
    repeats: int = 1,
) -> list[Fold]:
    """The folds of every repeat, repeat by repeat (repeat r split with `repeat_seed(seed, r)`)."""
    plan = []
    grouped = rules(protocol).grouped_folds
    for repeat in range(repeats):
        split_seed = repeat_seed(seed, repeat)
        for index, (train, test) in enumerate(outer_folds(y, groups, n_splits, split_seed, grouped)):
            if rules(protocol).epoch_on_test_fold:
                plan.append(Fold(index, fit=train, val=test, test=test, repeat=repeat))
            else:
                fit, val = validation_split(y, groups, train, val_fraction, split_seed + index)
                plan.append(Fold(index, fit=fit, val=val, test=test, repeat=repeat))
    return plan


def svm_fit_rows(protocol: str, folds: np.ndarray, fold: int) -> np.ndarray:
    """Rows the SVM's C search is fitted on for outer fold `fold`: its training images, or every image (paper)."""
    return np.arange(len(folds)) if rules(protocol).svm_on_all_images else np.flatnonzero(folds != fold)


def refit_split(y: np.ndarray, groups: np.ndarray, val_fraction: float, seed: int) -> Fold:
    """The refit's Fold: every image trains, a grouped stratified validation split picks the epoch, no test."""
    fit, val = validation_split(y, groups, np.arange(len(y)), val_fraction, seed)
    return Fold(index=0, fit=fit, val=val, test=np.array([], dtype=int))
