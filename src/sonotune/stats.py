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
- `clustered_auc_ci`, `clustered_delong_test`: Obuchowski's (1997) nonparametric clustered ROC variance —
  DeLong's placement values summed per group — per fold, combined over folds, logit-scale interval / t test
  with df = groups − 2·folds. The report's defaults (`report.interval`, `report.paired_test`).
- `cluster_permutation_test`: the clustered t recomputed after swapping two scorers' within-fold ranks for
  random halves of the groups; `_level_differences` does all replicates at once by counting.
- `too_few_groups`: why a dataset's folds allow no calibrated test (< MIN_GROUPS_PER_CLASS groups of a class).
- `holm`: Holm's step-down adjusted p-values (SciPy offers only Benjamini–Hochberg), along the last axis so a
  simulation adjusts thousands of studies at once.
- `equivalence_p`: equivalence within ±margin (two one-sided tests at alpha/2 each: the printed (1 − alpha)
  interval inside ±margin), on the paired test's own standard error and degrees of freedom.

Error rates and coverage of all of these under a known truth: tests/test_stats_simulation.py and
docs/statistics.md.
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
    se: float = float("nan")  # standard error of the difference, the one its p-value and interval use
    df: float = float("inf")  # degrees of freedom of its t reference (inf: normal)


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
    se = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else float("nan")
    return PairedTest(auc_a, auc_b, auc_a - auc_b, interval.low, interval.high, float(p_value), se)


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
                      float(difference + half), p_value, float(sd))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input's order, along the last axis (each row of a 2-D array is
    one set of hypotheses: a simulated study); NaNs stay NaN and are not counted."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, axis=-1, kind="stable")  # NaNs last
    ranked = np.take_along_axis(p, order, axis=-1)
    m = np.sum(~np.isnan(p), axis=-1, keepdims=True)
    factor = m - np.arange(p.shape[-1])
    stepped = np.fmax.accumulate(np.minimum(1.0, factor * ranked), axis=-1)
    adjusted = np.empty_like(p)
    np.put_along_axis(adjusted, order, np.where(np.isnan(ranked), np.nan, stepped), axis=-1)
    return adjusted


def equivalence_p(difference, se, df, margin: float) -> np.ndarray:
    """Equivalence test of |true difference| ≥ `margin` on the difference's own standard error and t reference:
    twice the larger of Schuirmann's two one-sided p-values (capped at 1), so p < alpha exactly when the
    two-sided (1 − alpha) interval the report prints lies inside ±margin. The plain two one-sided tests (the
    (1 − 2·alpha) interval) claimed equivalence at a true difference of ±margin in 7–9 % of simulated
    Mendeley-shaped studies — the clustered standard error shrinks with the observed difference — this form in
    at most alpha (tests/test_stats_study.py, docs/statistics.md)."""
    from scipy.stats import t as student

    difference, se, df = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (difference, se, df)))
    with np.errstate(invalid="ignore", divide="ignore"):
        below = student.sf((difference + margin) / se, df)  # H0: difference ≤ −margin
        above = student.cdf((difference - margin) / se, df)  # H0: difference ≥ +margin
        tost = np.where(se > 0, np.fmax(below, above), np.where(np.abs(difference) < margin, 0.0, 1.0))
    return np.minimum(1.0, 2 * tost)


# ------------------------------------------------------------------ clustered (Obuchowski 1997) statistics


def _rank_rows(values: np.ndarray) -> np.ndarray:
    """Midranks along each row of a 2-D array."""
    return rankdata(values, axis=1)


def placement_values(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `scores` (R × N): each positive's share of negatives it outranks (ties ½), and each negative's
    share of positives that outrank it — V10 (R × m) and V01 (R × n), whose means are the AUC."""
    y = np.asarray(y).astype(bool)
    scores = np.atleast_2d(np.asarray(scores))
    if np.issubdtype(scores.dtype, np.integer):
        return _placements_of_levels(y, scores)
    scores = scores.astype(float)
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    rank_all = _rank_rows(np.hstack([pos, neg]))
    v10 = (rank_all[:, :m] - _rank_rows(pos)) / n
    v01 = 1.0 - (rank_all[:, m:] - _rank_rows(neg)) / m
    return v10, v01


def _placements_of_levels(y: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`placement_values` for small non-negative integer scores by counting (no sort): R × N in O(R·(N + L))."""
    r, width = levels.shape[0], int(levels.max()) + 1
    offset = (np.arange(r) * width)[:, None]

    def histogram(rows: np.ndarray) -> np.ndarray:
        return np.bincount((rows + offset).ravel(), minlength=r * width).reshape(r, width).astype(float)

    pos, neg = levels[:, y], levels[:, ~y]
    pos_hist, neg_hist = histogram(pos), histogram(neg)
    neg_below, pos_above = np.cumsum(neg_hist, axis=1) - neg_hist, pos_hist[:, ::-1].cumsum(axis=1)[:, ::-1] - pos_hist
    row = np.arange(r)[:, None]
    v10 = (neg_below[row, pos] + 0.5 * neg_hist[row, pos]) / neg.shape[1]
    v01 = (pos_above[row, neg] + 0.5 * pos_hist[row, neg]) / pos.shape[1]
    return v10, v01


def _cluster_sums(values: np.ndarray, cluster: np.ndarray, n_clusters: int) -> np.ndarray:
    """Row-wise sums of `values` (R × n) per cluster index (length n) → R × n_clusters."""
    out = np.zeros((values.shape[0], n_clusters))
    if not len(cluster):
        return out
    order = np.argsort(cluster, kind="stable")
    present, starts = np.unique(cluster[order], return_index=True)
    out[:, present] = np.add.reduceat(values[:, order], starts, axis=1)
    return out


def clustered_auc_variance(y: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC of each row of `scores` (R × N) on one sample of clusters and Obuchowski's (1997) variance of it.

    The nonparametric clustered ROC estimator: DeLong's placement values summed per cluster, so the variance
    counts clusters, not images (a cluster may hold both classes). With one image per cluster it is DeLong's
    variance.
    """
    v10, v01, m_k, n_k = _clustered_terms(y, scores, groups)
    auc = v10.sum(axis=1) / m_k.sum()
    return auc, _obuchowski_variance(v10, v01, m_k, n_k, auc)


def _clustered_terms(y, scores, groups):
    """Placement values summed per cluster: V10_k (R × C), V01_k (R × C) and each cluster's counts m_k, n_k."""
    y = np.asarray(y).astype(bool)
    _, cluster = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    n_clusters = cluster.max() + 1
    v10, v01 = placement_values(y, scores)
    m_k = np.bincount(cluster[y], minlength=n_clusters).astype(float)
    n_k = np.bincount(cluster[~y], minlength=n_clusters).astype(float)
    return _cluster_sums(v10, cluster[y], n_clusters), _cluster_sums(v01, cluster[~y], n_clusters), m_k, n_k


def _obuchowski_variance(v10: np.ndarray, v01: np.ndarray, m_k: np.ndarray, n_k: np.ndarray,
                         auc: np.ndarray) -> np.ndarray:
    """Obuchowski (1997) eq. for var(AUC) from per-cluster placement sums; works for a difference of two
    scorers' placement sums too (the estimator is linear in them), with `auc` the difference."""
    M, N = m_k.sum(), n_k.sum()
    i10, i01, i_all = (m_k > 0).sum(), (n_k > 0).sum(), ((m_k + n_k) > 0).sum()
    d10 = (v10 - m_k * auc[:, None]) * (m_k > 0)
    d01 = (v01 - n_k * auc[:, None]) * (n_k > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        s10 = i10 / ((i10 - 1) * M) * (d10 ** 2).sum(axis=1)
        s01 = i01 / ((i01 - 1) * N) * (d01 ** 2).sum(axis=1)
        s11 = i_all / (i_all - 1) * (d10 * d01).sum(axis=1)
        return s10 / M + s01 / N + 2 * s11 / (M * N)


def fold_class_groups(y, groups, folds) -> dict:
    """Number of groups holding each class in each fold: {fold: (groups with a benign image, with a malignant)}."""
    y, groups, folds = np.asarray(y).astype(bool), np.asarray(groups).astype(str), np.asarray(folds)
    return {fold: (len(np.unique(groups[(folds == fold) & ~y])), len(np.unique(groups[(folds == fold) & y])))
            for fold in np.unique(folds)}


def too_few_groups(y, groups, folds, minimum: int) -> str | None:
    """Why no calibrated test or interval is possible (some fold has fewer than `minimum` groups of a class),
    or None."""
    for fold, (benign, malignant) in fold_class_groups(y, groups, folds).items():
        if min(benign, malignant) < minimum:
            return (f"fold {fold} holds {benign} benign and {malignant} malignant groups; "
                    f"a calibrated test needs at least {minimum} of each per fold")
    return None


def clustered_fold_mean(y, scores, groups, folds) -> tuple[np.ndarray, np.ndarray, int]:
    """Fold-mean AUC of each row of `scores` (R × N) and Obuchowski's variance of that mean (folds are disjoint
    samples: var(mean) = Σ_k var_k / K²); also the number of clusters used (for the t reference)."""
    y, groups, folds = np.asarray(y), np.asarray(groups).astype(str), np.asarray(folds)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    aucs, variances, clusters = [], [], 0
    for fold in np.unique(folds):
        rows = folds == fold
        auc, variance = clustered_auc_variance(y[rows], scores[:, rows], groups[rows])
        aucs.append(auc)
        variances.append(variance)
        clusters += len(np.unique(groups[rows]))
    k = len(aucs)
    return np.mean(aucs, axis=0), np.sum(variances, axis=0) / k ** 2, clusters


def t_df(clusters: int, folds: int) -> int:
    """Degrees of freedom of the t reference: clusters minus two per fold (a mean per class per fold)."""
    return max(clusters - 2 * folds, 1)


def clustered_auc_ci(y, score, groups, folds, alpha: float = 0.05, repeats=None) -> Interval:
    """Fold-mean AUC and a (1 − alpha) interval from Obuchowski's clustered variance, on the logit scale (so it
    stays inside (0, 1)) with a t reference of `t_df` degrees of freedom.

    With `repeats` (each row's repeat of repeated CV; the same images re-split) the AUC is the mean over repeats
    of each repeat's fold-mean AUC and the variance the mean of theirs — never below the variance of that mean
    (the repeats' errors are correlated at most perfectly), so the interval stays conservative."""
    from scipy.stats import t as student

    y, score, groups, folds = (np.asarray(v) for v in (y, score, groups, folds))
    repeats = np.zeros(len(folds), dtype=int) if repeats is None else np.asarray(repeats)
    per_repeat = [clustered_fold_mean(y[rows], score[rows], groups[rows], folds[rows])
                  for rows in (repeats == r for r in np.unique(repeats))]
    auc, variance = (float(np.mean([part[i][0] for part in per_repeat])) for i in (0, 1))
    clusters = per_repeat[0][2]
    folds = folds[repeats == repeats.min()]
    if np.isnan(auc) or np.isnan(variance):
        return Interval(auc, float("nan"), float("nan"))
    if variance == 0:  # every pair ranked right (or wrong) in every fold: the variance estimate says nothing
        return _perfect_ranking_interval(y, groups, auc, alpha)
    quantile = student.ppf(1 - alpha / 2, t_df(clusters, len(np.unique(folds))))
    clipped = min(max(auc, 1e-4), 1 - 1e-4)
    logit, sd = np.log(clipped / (1 - clipped)), np.sqrt(variance) / (clipped * (1 - clipped))
    low, high = 1 / (1 + np.exp(-(logit - quantile * sd))), 1 / (1 + np.exp(-(logit + quantile * sd)))
    return Interval(auc, float(min(low, auc)), float(max(high, auc)))


def _perfect_ranking_interval(y, groups, auc: float, alpha: float) -> Interval:
    """AUC 1 (or 0) in every fold: the exact binomial (Clopper–Pearson) bound for c successes in c trials,
    c the number of groups of the smaller class — conservative, since a pair of groups is the unit that errs."""
    y, groups = np.asarray(y).astype(bool), np.asarray(groups).astype(str)
    trials = min(len(np.unique(groups[y])), len(np.unique(groups[~y])))
    bound = (alpha / 2) ** (1 / trials)
    return Interval(auc, bound, 1.0) if auc >= 0.5 else Interval(auc, 0.0, 1 - bound)


def clustered_delong_tests(y, pairs, groups, folds) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """`clustered_delong_test` for R pairs of scorers at once (`pairs` R × 2 × N): fold-mean AUCs (R × 2), the
    standard error of each difference (R), its two-sided p-value (R) and the t reference's degrees of freedom."""
    from scipy.stats import t as student

    folds = np.asarray(folds)
    aucs, variance, clusters = _difference_over_folds(y, np.asarray(pairs, dtype=float), groups, folds)
    difference, se = aucs[:, 0] - aucs[:, 1], np.sqrt(variance)
    df = t_df(clusters, len(np.unique(folds)))
    with np.errstate(invalid="ignore", divide="ignore"):
        p_value = np.where(se > 0, 2 * student.sf(np.abs(difference) / se, df),
                           np.where(difference == 0, 1.0, 0.0))
    return aucs, se, np.where(np.isnan(se), np.nan, p_value), df


def clustered_delong_test(y, score_a, score_b, groups, folds, alpha: float = 0.05) -> PairedTest:
    """Fold-mean AUC difference a − b with Obuchowski's clustered variance (DeLong generalised to clusters),
    combined over folds, referred to a t distribution with `t_df` degrees of freedom."""
    from scipy.stats import t as student

    scores = np.vstack([np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)])
    aucs, se, p_value, df = clustered_delong_tests(y, scores[None], groups, folds)
    (auc_a, auc_b), sd = aucs[0], float(se[0])
    difference = auc_a - auc_b
    if np.isnan(sd):
        return PairedTest(float(auc_a), float(auc_b), float(difference), *(float("nan"),) * 3)
    half = student.ppf(1 - alpha / 2, df) * sd
    return PairedTest(float(auc_a), float(auc_b), float(difference), float(difference - half),
                      float(difference + half), float(p_value[0]), sd, float(df))


def _difference_over_folds(y, scores, groups, folds):
    """For R pairs of scorers (`scores` R × 2 × N): fold-mean AUCs (R × 2), Obuchowski's variance of the
    fold-mean difference (R), and the number of clusters."""
    y, groups, folds = np.asarray(y), np.asarray(groups).astype(str), np.asarray(folds)
    r = scores.shape[0]
    aucs, variances, clusters = [], [], 0
    for fold in np.unique(folds):
        rows = folds == fold
        flat = scores[:, :, rows].reshape(2 * r, -1)
        v10, v01, m_k, n_k = _clustered_terms(y[rows], flat, groups[rows])
        auc = (v10.sum(axis=1) / m_k.sum()).reshape(r, 2)
        v10, v01 = v10.reshape(r, 2, -1), v01.reshape(r, 2, -1)
        variances.append(_obuchowski_variance(v10[:, 0] - v10[:, 1], v01[:, 0] - v01[:, 1], m_k, n_k,
                                              auc[:, 0] - auc[:, 1]))
        aucs.append(auc)
        clusters += len(np.unique(groups[rows]))
    k = len(aucs)
    return np.mean(aucs, axis=0), np.sum(variances, axis=0) / k ** 2, clusters


def within_fold_levels(score, folds) -> np.ndarray:
    """Each score's midrank inside its fold, doubled to an integer (2·rank − 1, in 1 … 2·n − 1): the same
    per-fold AUCs, on a scale two scorers share when folds are compared fold by fold."""
    score, folds = np.asarray(score, dtype=float), np.asarray(folds)
    out = np.empty(len(score), dtype=np.int64)
    for fold in np.unique(folds):
        rows = folds == fold
        out[rows] = np.rint(2 * rankdata(score[rows]) - 1).astype(np.int64)
    return out


def _codes(values) -> np.ndarray:
    return np.unique(np.asarray(values).astype(str), return_inverse=True)[1]


def _level_differences(y: np.ndarray, levels: np.ndarray, fold: np.ndarray, cluster: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold-mean AUCs of a and b (R × 2), their difference a − b and Obuchowski's variance of it (R each), for R
    pairs of integer within-fold levels
    (`levels` R × 2 × N), every fold at once by counting: the permutation test's inner loop, O(R·N).

    `fold` and `cluster` are integer codes (a cluster lies in one fold); the result equals
    `_difference_over_folds` on the same levels (checked in the tests)."""
    r = levels.shape[0]
    flat = levels.reshape(2 * r, -1)
    n_folds, n_clusters = fold.max() + 1, cluster.max() + 1
    n_pos, n_neg = np.bincount(fold[y], minlength=n_folds), np.bincount(fold[~y], minlength=n_folds)
    width = 2 * (n_pos + n_neg) + 1
    offset = np.concatenate([[0], np.cumsum(width)[:-1]])
    index = flat + offset[fold]
    total = int(width.sum())
    rows = (np.arange(2 * r) * total)[:, None]

    def histogram(mask):
        counts = np.bincount((index[:, mask] + rows).ravel(), minlength=2 * r * total)
        return counts.reshape(2 * r, total)

    pos_hist, neg_hist = histogram(y), histogram(~y)
    pos_cum, neg_cum = np.cumsum(pos_hist, axis=1), np.cumsum(neg_hist, axis=1)
    before = offset[1:] - 1  # last column of the previous fold

    def base(cum):
        return np.hstack([np.zeros((2 * r, 1)), cum[:, before]])

    pos_base, neg_base = base(pos_cum), base(neg_cum)
    fp, fn, ip, ineg = fold[y], fold[~y], index[:, y], index[:, ~y]

    def at(counts, where):
        return np.take_along_axis(counts, where, axis=1)

    # negatives below each positive (ties ½), positives above each negative (ties ½), inside its own fold
    v10 = (at(neg_cum, ip) - 0.5 * at(neg_hist, ip) - neg_base[:, fp]) / n_neg[fp]
    v01 = (n_pos[fn] - at(pos_cum, ineg) + 0.5 * at(pos_hist, ineg) + pos_base[:, fn]) / n_pos[fn]
    s10 = _cluster_sums(v10, cluster[y], n_clusters).reshape(r, 2, -1)
    s01 = _cluster_sums(v01, cluster[~y], n_clusters).reshape(r, 2, -1)
    d10, d01 = s10[:, 0] - s10[:, 1], s01[:, 0] - s01[:, 1]  # R × C
    m_k = np.bincount(cluster[y], minlength=n_clusters).astype(float)
    n_k = np.bincount(cluster[~y], minlength=n_clusters).astype(float)
    cluster_fold = np.zeros(n_clusters, dtype=int)
    cluster_fold[cluster] = fold
    in_fold = np.zeros((n_clusters, n_folds))
    in_fold[np.arange(n_clusters), cluster_fold] = 1.0
    big_m, big_n = m_k @ in_fold, n_k @ in_fold
    aucs = (s10 @ in_fold / big_m).mean(axis=2)  # R × 2: fold-mean AUC of a and of b
    delta = (d10 @ in_fold) / big_m  # R × K: per-fold AUC difference
    e10 = (d10 - m_k * delta[:, cluster_fold]) * (m_k > 0)
    e01 = (d01 - n_k * delta[:, cluster_fold]) * (n_k > 0)
    i10, i01, i_all = (m_k > 0) @ in_fold, (n_k > 0) @ in_fold, ((m_k + n_k) > 0) @ in_fold
    with np.errstate(invalid="ignore", divide="ignore"):
        var10 = i10 / ((i10 - 1) * big_m) * ((e10 ** 2) @ in_fold)
        var01 = i01 / ((i01 - 1) * big_n) * ((e01 ** 2) @ in_fold)
        var11 = i_all / (i_all - 1) * ((e10 * e01) @ in_fold)
        variance = var10 / big_m + var01 / big_n + 2 * var11 / (big_m * big_n)
    return aucs, delta.mean(axis=1), variance.sum(axis=1) / n_folds ** 2


def cluster_permutation_test(y, score_a, score_b, groups, folds, n_permutations: int = 1999, alpha: float = 0.05,
                             seed: int = 0) -> PairedTest:
    """Paired permutation test of fold-mean AUC(a) = AUC(b): each replicate swaps the two scorers' scores of
    every image of a random half of the groups (each group a fair coin), after putting both scorers on one
    scale (within-fold ranks, which leave every fold's AUC unchanged: an MLP's probabilities and an SVM's
    decision values cannot be swapped raw).

    The statistic is the clustered-DeLong t (difference / Obuchowski SE); p = (1 + #{|t*| ≥ |t|}) / (1 + B).
    Swapping ranks computed before the swap is only approximately swapping the scorers, so the test is not
    exact even when the pair (a, b) is exchangeable: its level was 0.032–0.064 in the simulation
    (docs/statistics.md). The interval is `clustered_delong_test`'s.
    """
    from scipy.stats import t as student

    y, folds = np.asarray(y).astype(bool), np.asarray(folds)
    fold = _codes(folds)
    cluster = _codes(np.char.add(np.asarray(groups).astype(str), np.char.add("|", fold.astype(str))))
    a, b = within_fold_levels(score_a, fold), within_fold_levels(score_b, fold)
    rng = np.random.default_rng(seed)
    swap = np.vstack([np.zeros(cluster.max() + 1, bool), rng.random((n_permutations, cluster.max() + 1)) < 0.5])
    swap = swap[:, cluster]  # row 0: the observed assignment
    levels = np.stack([np.where(swap, b, a), np.where(swap, a, b)], axis=1)  # (1 + B) × 2 × N
    aucs, difference, variance = _level_differences(y, levels, fold, cluster)
    (auc_a, auc_b), observed, sd = aucs[0], float(difference[0]), float(np.sqrt(variance[0]))
    if np.isnan(sd):
        return PairedTest(float(auc_a), float(auc_b), observed, *(float("nan"),) * 3)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(variance > 0, difference / np.sqrt(variance), np.where(difference == 0, 0.0, np.inf))
    exceed = np.sum(np.abs(t[1:]) >= abs(t[0]) * (1 - 1e-9))
    df = t_df(cluster.max() + 1, fold.max() + 1)
    half = student.ppf(1 - alpha / 2, df) * sd
    return PairedTest(float(auc_a), float(auc_b), observed, observed - half, observed + half,
                      float((1 + exceed) / (1 + n_permutations)), sd, float(df))


# ------------------------------------------------------------------ what the report calls

MIN_GROUPS_PER_CLASS = 2  # per fold: below it no clustered variance exists (tests/test_stats_simulation.py holds
#                           the default test's level at exactly 2 lesions of each class per fold)
PAIRED_TESTS = ("permutation", "clustered_delong", "delong", "bootstrap")


def paired_test(method: str, y, score_a, score_b, groups, folds, alpha: float = 0.05, n_resamples: int = 999,
                seed: int = 0) -> PairedTest:
    """The paired comparison `method` names (`report.paired_test`): `permutation` (studentized, groups swapped),
    `clustered_delong` (Obuchowski, t reference), `delong` (images independent) or `bootstrap` (groups)."""
    if method == "permutation":
        return cluster_permutation_test(y, score_a, score_b, groups, folds, n_resamples, alpha, seed)
    if method == "clustered_delong":
        return clustered_delong_test(y, score_a, score_b, groups, folds, alpha)
    if method == "delong":
        return delong_test(y, score_a, score_b, folds, alpha)
    if method == "bootstrap":
        return paired_bootstrap_test(y, score_a, score_b, groups, folds, n_resamples, alpha, seed)
    raise ValueError(f"unknown paired test {method!r}; expected one of {PAIRED_TESTS}")
