"""sonotune.stats: AUC under weights, group bootstrap intervals, DeLong against a hand computation, Holm."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from sonotune import stats


def _sample(n: int, seed: int, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    score = rng.normal(size=n) + shift * y
    return y, score


def test_weighted_auc_matches_sklearn_with_ties_and_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = np.round(rng.normal(size=200) + y, 1)  # rounding makes many ties
    weights = rng.integers(0, 4, size=(3, 200)).astype(float)
    expected = [roc_auc_score(y, score, sample_weight=w) for w in weights]
    assert stats.weighted_auc(y, score, weights) == pytest.approx(expected)
    assert stats.weighted_auc(y, score, np.ones(200))[0] == pytest.approx(roc_auc_score(y, score))


def test_fold_mean_auc_is_mean_of_fold_aucs():
    y, score = _sample(90, 1)
    folds = np.arange(90) % 3
    expected = np.mean([roc_auc_score(y[folds == k], score[folds == k]) for k in range(3)])
    assert stats.fold_mean_auc(y, score, folds)[0] == pytest.approx(expected)


def test_group_bootstrap_moves_groups_together_and_keeps_strata():
    y = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    groups = np.array(["a", "a", "b", "b", "c", "d", "e", "e"])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    weights = stats.group_bootstrap_weights(y, groups, folds, 200, seed=3)
    assert np.array_equal(weights[:, 0], weights[:, 1]) and np.array_equal(weights[:, 6], weights[:, 7])
    # each (fold, class) stratum keeps its number of groups: fold 1 benign has groups c, d
    assert np.all(weights[:, 4] + weights[:, 5] == 2)
    assert np.all(weights[:, 2] == 1)  # the only malignant group of fold 0 is always drawn once


def test_bootstrap_ci_contains_estimate_and_shrinks_with_more_data():
    widths = []
    for n in (60, 600):
        y, score = _sample(n, 5)
        folds = np.arange(n) % 3
        groups = np.arange(n).astype(str)
        ci = stats.bootstrap_auc_ci(y, score, groups, folds, n_resamples=500, seed=1)
        assert ci.low <= ci.estimate <= ci.high
        assert ci.estimate == pytest.approx(stats.fold_mean_auc(y, score, folds)[0])
        widths.append(ci.high - ci.low)
    assert widths[1] < widths[0] / 2  # width ~ 1/sqrt(n): ten times the data, about a third of the width


def test_delong_matches_hand_computation():
    # Positives A: .9 .7 .3, negatives A: .5 .1 → placements V10_A = [1, 1, .5], V01_A = [2/3, 1], AUC_A = 5/6.
    # Positives B: .6 .4 .8, negatives B: .7 .2 → V10_B = [.5, .5, 1], V01_B = [1/3, 1], AUC_B = 2/3.
    # S10 (sample cov over the 3 positives): var A = var B = 1/12, cov = −1/12.
    # S01 (over the 2 negatives): var A = 1/18, var B = 2/9, cov = 1/9.
    # var(A − B) = (1/12 + 1/12 + 2/12)/3 + (1/18 + 4/18 − 4/18)/2 = 1/9 + 1/36 = 5/36.
    # z = (1/6) / sqrt(5/36) = 1/sqrt(5) = 0.4472; p = 2·(1 − Φ(0.4472)) = 0.6547.
    y = np.array([1, 1, 1, 0, 0])
    a = np.array([0.9, 0.7, 0.3, 0.5, 0.1])
    b = np.array([0.6, 0.4, 0.8, 0.7, 0.2])
    aucs, cov = stats.delong_covariance(y, np.vstack([a, b]))
    assert aucs == pytest.approx([5 / 6, 2 / 3])
    assert cov[0, 0] == pytest.approx(1 / 12 / 3 + 1 / 18 / 2)  # = 1/18
    test = stats.delong_test(y, a, b)
    assert test.difference == pytest.approx(1 / 6)
    assert test.p_value == pytest.approx(0.6547, abs=1e-4)
    assert test.low < 0 < test.high


def _slow_delong_variance(y, a, b):
    """The O(m·n) definition: placement values from the pairwise kernel ψ(x, y) = [x > y] + ½[x = y]."""
    def placements(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(axis=1), psi.mean(axis=0)
    (a10, a01), (b10, b01) = placements(a), placements(b)
    d10, d01 = a10 - b10, a01 - b01
    return np.var(d10, ddof=1) / len(d10) + np.var(d01, ddof=1) / len(d01), a10.mean() - b10.mean()


def test_delong_fast_algorithm_matches_the_pairwise_definition_with_ties():
    y, a = _sample(80, 7)
    b = np.round(a + np.random.default_rng(8).normal(scale=0.8, size=80), 1)
    variance, difference = _slow_delong_variance(y, a, b)
    test = stats.delong_test(y, a, b)
    assert test.difference == pytest.approx(difference)
    from scipy.stats import norm
    assert test.p_value == pytest.approx(2 * norm.sf(abs(difference) / np.sqrt(variance)))


def test_delong_over_folds_combines_disjoint_folds():
    y, a = _sample(120, 9)
    b = a + np.random.default_rng(10).normal(scale=1.0, size=120)
    folds = np.arange(120) % 3
    parts = [_slow_delong_variance(y[folds == k], a[folds == k], b[folds == k]) for k in range(3)]
    test = stats.delong_test(y, a, b, folds)
    assert test.difference == pytest.approx(np.mean([d for _, d in parts]))
    sd = np.sqrt(sum(v for v, _ in parts)) / 3
    from scipy.stats import norm
    assert test.p_value == pytest.approx(2 * norm.sf(abs(test.difference) / sd))


def test_paired_tests_separate_a_real_difference_from_none():
    y, good = _sample(400, 11, shift=2.0)
    rng = np.random.default_rng(12)
    weak = good + rng.normal(scale=3.0, size=400)
    same = good + rng.normal(scale=1e-6, size=400)
    folds, groups = np.arange(400) % 5, np.arange(400).astype(str)
    for test in (stats.delong_test(y, good, weak, folds),
                 stats.paired_bootstrap_test(y, good, weak, groups, folds, n_resamples=400, seed=0)):
        assert test.difference > 0 and test.p_value < 0.01 and test.low > 0
    for test in (stats.delong_test(y, good, same, folds),
                 stats.paired_bootstrap_test(y, good, same, groups, folds, n_resamples=400, seed=0)):
        assert test.p_value > 0.5


def test_holm_hand_example():
    # sorted: .005·4 = .02, .01·3 = .03, .03·2 = .06, .04·1 = .04 → max(.06, .04) = .06 (step-down is monotone)
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, np.nan])
    assert adjusted[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert np.isnan(adjusted[4])
    assert stats.holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])
