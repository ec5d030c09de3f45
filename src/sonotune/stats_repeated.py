"""Comparing two strategies across repeated cross-validation, training variance included: the corrected
resampled t-test of Nadeau & Bengio (2003), in the repeated k-fold form of Bouckaert & Frank (2004).

Why: `stats.py`'s intervals and paired tests hold each fold's trained model fixed; the spread that a retrain
brings (initialisation, dropout, shuffling, and which images land in which fold) is in none of them. Repeated
cross-validation (`cv.repeats` R) retrains every fold of R splits; the difference between two strategies on
each (repeat, fold) then carries that spread. Those R·k differences are not independent (every two training
sets share most of their images), so the naive paired t-test, variance s²/(R·k), is far too confident. The
corrected test inflates the variance of the mean to

    (1 / (k·R) + n_test / n_train) · s²,        t = mean / sqrt(that),  df = k·R − 1,

where s² is the sample variance of the R·k differences and n_test / n_train the ratio of a test fold's size to
its training set's (1 / (k − 1) for k-fold CV: `kfold_test_train_ratio`). tests/test_stats_repeated.py shows by
simulation that it holds its level under a null with training variance, where the naive test does not.

How the report uses it (`stages/report/statistics.py`, for every dataset trained with `cv.repeats` R > 1): for
two configurations A and B it computes each one's AUC on every (repeat, fold) from the out-of-fold scores and
calls `corrected_resampled_ttest(auc_A − auc_B, kfold_test_train_ratio(k))` with the differences as an (R, k)
array. n_train counts only the images the weights are fitted on: under `protocol: leakage_free` the MLP's
validation split (`cv.val_fraction`, which only picks the epoch) is left out, n_train = (k − 1)/k · N · (1 − v),
and the same ratio serves every comparison (the SVM's features come from that network; for two SVMs on
pretrained features it is the conservative side). The simulation with a validation split is in
tests/test_stats_repeated.py. Holm's correction (`stats.holm`) applies to its p-values like to any other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import t as student_t


@dataclass(frozen=True)
class ResampledTest:
    mean: float  # mean of the differences (A − B) over every (repeat, fold)
    se: float  # standard error the test uses
    t: float
    df: int
    p_value: float  # two-sided
    low: float  # (1 − alpha) confidence interval of the mean difference
    high: float
    n: int  # number of differences (k·R)


def kfold_test_train_ratio(n_splits: int, val_fraction: float = 0.0) -> float:
    """n_test / n_train of k-fold cross-validation: one fold tested, k − 1 trained on — of which the weights are
    fitted on all but `val_fraction` (the share held out to pick the epoch, which fits no weight)."""
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2 (got {n_splits})")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1) (got {val_fraction})")
    return 1.0 / ((n_splits - 1) * (1 - val_fraction))


def _t_test(differences, variance_factor, alpha: float) -> ResampledTest:
    d = np.asarray(differences, dtype=float).ravel()
    if d.size < 2 or not np.all(np.isfinite(d)):
        raise ValueError(f"need at least 2 finite differences (got {d.size}, finite: {np.isfinite(d).sum()})")
    mean, df = float(d.mean()), d.size - 1
    # every difference equal (np.var of equal floats can be rounding noise, not 0): no spread
    se = 0.0 if np.ptp(d) == 0 else float(np.sqrt(variance_factor(d.size) * d.var(ddof=1)))
    if se == 0.0:  # a constant difference: certain when non-zero; an exact tie is no difference
        t_stat = 0.0 if mean == 0.0 else float(np.sign(mean) * np.inf)
    else:
        t_stat = mean / se
    p_value = float(2 * student_t.sf(abs(t_stat), df))
    half = float(student_t.ppf(1 - alpha / 2, df)) * se
    return ResampledTest(mean, se, t_stat, df, p_value, mean - half, mean + half, d.size)


def corrected_resampled_ttest(differences, test_train_ratio: float, alpha: float = 0.05) -> ResampledTest:
    """Nadeau–Bengio corrected resampled t-test of the mean of `differences` (one per (repeat, fold), any
    shape) with variance factor 1/(k·R) + `test_train_ratio` (n_test / n_train)."""
    if not 0 < test_train_ratio < np.inf:
        raise ValueError(f"test_train_ratio must be positive (got {test_train_ratio})")
    return _t_test(differences, lambda n: 1.0 / n + test_train_ratio, alpha)


def naive_paired_ttest(differences, alpha: float = 0.05) -> ResampledTest:
    """The usual paired t-test over the (repeat, fold) differences, as if they were independent (factor 1/(k·R)):
    for comparison only — it ignores the overlap of the training sets and rejects a true null too often."""
    return _t_test(differences, lambda n: 1.0 / n, alpha)
