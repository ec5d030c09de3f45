"""Uncertainty of cross-validated AUCs: bootstrap confidence intervals, paired tests, Holm's correction.

Pure NumPy/SciPy functions, used by the `report` stage and free of anything ultrasound. The statistic is the
one the paper's Table 3 reports: the AUC of each test fold, averaged over folds. Out-of-fold scores of
different folds come from different models, so they are never ranked against each other.

- `bootstrap_auc_ci`: percentile interval of the fold-mean AUC. Each replicate resamples *groups* (a patient,
  a set of duplicates) with replacement inside each (fold, class) stratum, so images of one group move
  together and every fold keeps both classes (pROC's stratified bootstrap, per fold).
  `scipy.stats.bootstrap` resamples observations, not clusters within strata, hence the hand-written loop.
- `delong_test`: DeLong, DeLong & Clarke-Pearson (1988) for two correlated AUCs on the same images, computed
  per fold with the placement-value (midrank) algorithm of Sun & Xu (2014) and combined over folds, which
  are disjoint: var(mean_k Δ_k) = Σ_k var(Δ_k) / K². It treats images as independent.
- `paired_bootstrap_test`: the same replicates as the CI applied to both scorers; respects groups.
- `holm`: Holm's step-down adjusted p-values (SciPy offers only Benjamini–Hochberg).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedTest:
    auc_a: float
    auc_b: float
    difference: float  # auc_a - auc_b
    low: float  # confidence interval of the difference (NaN for DeLong's when undefined)
    high: float
    p_value: float


def weighted_auc(y: np.ndarray, score: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """ROC AUC under row weights (Mann–Whitney with ties counted ½), one AUC per row of `weights` (B × N).

    A bootstrap replicate is a vector of row multiplicities, so B replicates cost two matrix products.
    """
    y = np.asarray(y).astype(bool)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    _, level = np.unique(np.asarray(score, dtype=float), return_inverse=True)
    levels = level.max() + 1
    onehot = np.zeros((len(level), levels))
    onehot[np.arange(len(level)), level] = 1.0
    pos = weights[:, y] @ onehot[y]  # B × levels: weight of positives at each score level
    neg = weights[:, ~y] @ onehot[~y]
    below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (below + 0.5 * neg)).sum(axis=1)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def fold_mean_auc(y: np.ndarray, score: np.ndarray, folds: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean over folds of each fold's AUC (folds lacking a class are skipped), per row of `weights`."""
    y, score, folds = np.asarray(y), np.asarray(score, dtype=float), np.asarray(folds)
    if weights is None:
        weights = np.ones((1, len(y)))
    per_fold = [weighted_auc(y[folds == k], score[folds == k], weights[:, folds == k]) for k in np.unique(folds)]
    stacked = np.vstack(per_fold)
    defined = ~np.isnan(stacked).all(axis=1)
    return stacked[defined].mean(axis=0) if defined.any() else np.full(weights.shape[0], np.nan)


def group_bootstrap_weights(y: np.ndarray, groups: np.ndarray, folds: np.ndarray, n_resamples: int,
                            seed: int) -> np.ndarray:
    """Row multiplicities (n_resamples × N) of a bootstrap that resamples groups within (fold, class) strata.

    A group's class is the class of most of its rows; its rows are drawn together.
    """
    y, groups, folds = np.asarray(y), np.asarray(groups).astype(str), np.asarray(folds)
    rng = np.random.default_rng(seed)
    group_ids, row_group = np.unique(groups, return_inverse=True)
    group_fold = np.zeros(len(group_ids), dtype=folds.dtype)
    group_class = np.zeros(len(group_ids), dtype=int)
    for g in range(len(group_ids)):
        rows = row_group == g
        group_fold[g] = folds[rows][0]
        group_class[g] = int(round(y[rows].mean()))
    counts = np.zeros((n_resamples, len(group_ids)))
    for fold in np.unique(group_fold):
        for label in (0, 1):
            members = np.flatnonzero((group_fold == fold) & (group_class == label))
            if len(members):
                drawn = rng.multinomial(len(members), np.full(len(members), 1 / len(members)), size=n_resamples)
                counts[:, members] = drawn
    return counts[:, row_group]


def percentile_interval(estimate: float, replicates: np.ndarray, alpha: float) -> Interval:
    replicates = replicates[~np.isnan(replicates)]
    if not len(replicates) or np.isnan(estimate):
        return Interval(float(estimate), float("nan"), float("nan"))
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high))


def bootstrap_auc_ci(y, score, groups, folds, n_resamples: int = 1000, alpha: float = 0.05,
                     seed: int = 0) -> Interval:
    """Fold-mean AUC with its (1 − alpha) percentile interval from a group bootstrap within folds."""
    weights = group_bootstrap_weights(y, groups, folds, n_resamples, seed)
    estimate = float(fold_mean_auc(y, score, folds)[0])
    return percentile_interval(estimate, fold_mean_auc(y, score, folds, weights), alpha)


def paired_bootstrap_test(y, score_a, score_b, groups, folds, n_resamples: int = 1000, alpha: float = 0.05,
                          seed: int = 0) -> PairedTest:
    """Fold-mean AUC difference a − b on the same images, interval and two-sided bootstrap p-value."""
    weights = group_bootstrap_weights(y, groups, folds, n_resamples, seed)
    auc_a, auc_b = (float(fold_mean_auc(y, s, folds)[0]) for s in (score_a, score_b))
    diffs = fold_mean_auc(y, score_a, folds, weights) - fold_mean_auc(y, score_b, folds, weights)
    diffs = diffs[~np.isnan(diffs)]
    interval = percentile_interval(auc_a - auc_b, diffs, alpha)
    # share of replicates on each side of zero, with the +1 that keeps a p-value away from an impossible 0
    tail = min(np.sum(diffs <= 0), np.sum(diffs >= 0))
    p_value = min(1.0, 2 * (tail + 1) / (len(diffs) + 1))
    return PairedTest(auc_a, auc_b, auc_a - auc_b, interval.low, interval.high, float(p_value))


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k scorers (`scores` k × N) on one sample and their DeLong covariance matrix (k × k)."""
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    both = np.hstack([pos, neg])
    rank_all = np.apply_along_axis(rankdata, 1, both)
    rank_pos = np.apply_along_axis(rankdata, 1, pos)
    rank_neg = np.apply_along_axis(rankdata, 1, neg)
    v10 = (rank_all[:, :m] - rank_pos) / n  # per positive: share of negatives it outranks
    v01 = 1.0 - (rank_all[:, m:] - rank_neg) / m  # per negative: share of positives that outrank it
    aucs = v10.mean(axis=1)
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, covariance


def delong_test(y, score_a, score_b, folds=None, alpha: float = 0.05) -> PairedTest:
    """DeLong's test of fold-mean AUC(a) = AUC(b) on the same images (one fold when `folds` is None)."""
    y = np.asarray(y)
    folds = np.zeros(len(y), dtype=int) if folds is None else np.asarray(folds)
    scores = np.vstack([np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)])
    aucs, variances = [], []
    for fold in np.unique(folds):
        rows = folds == fold
        if y[rows].min() == y[rows].max() or min(y[rows].sum(), (1 - y[rows]).sum()) < 2:
            continue  # a class with fewer than two images leaves the variance undefined
        auc, cov = delong_covariance(y[rows], scores[:, rows])
        aucs.append(auc)
        variances.append(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if not aucs:
        return PairedTest(*(float("nan"),) * 6)
    auc_a, auc_b = np.mean(aucs, axis=0)
    difference = auc_a - auc_b
    sd = np.sqrt(np.sum(variances)) / len(aucs)
    if sd == 0:
        p_value = 1.0 if difference == 0 else 0.0
    else:
        p_value = float(2 * norm.sf(abs(difference) / sd))
    half = norm.ppf(1 - alpha / 2) * sd
    return PairedTest(float(auc_a), float(auc_b), float(difference), float(difference - half),
                      float(difference + half), p_value)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order; NaNs stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted
