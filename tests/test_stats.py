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


# ---------------------------------------------------------------- clustered statistics


def test_clustered_variance_is_delong_for_single_images():
    y, a = _sample(150, 21)
    b = a + np.random.default_rng(22).normal(size=150)
    folds, groups = np.arange(150) % 3, np.arange(150).astype(str)
    auc, variance = stats.clustered_auc_variance(y, a, groups)
    expected_auc, covariance = stats.delong_covariance(y, a)
    assert auc[0] == pytest.approx(expected_auc[0]) and variance[0] == pytest.approx(covariance[0, 0])
    clustered, plain = stats.clustered_delong_test(y, a, b, groups, folds), stats.delong_test(y, a, b, folds)
    assert clustered.difference == pytest.approx(plain.difference)
    # same standard error; the t reference (df = 150 − 2·3) makes the p-value a little larger than the z one
    assert (clustered.high - clustered.low) / (plain.high - plain.low) == pytest.approx(1.0, abs=0.02)
    assert plain.p_value < clustered.p_value < plain.p_value * 1.2


def test_copies_of_an_image_add_no_information():
    """Each image repeated 5 times as one cluster: same AUC and the same variance as the single images."""
    y, a = _sample(60, 23)
    groups = np.arange(60).astype(str)
    auc, variance = stats.clustered_auc_variance(y, a, groups)
    auc5, variance5 = stats.clustered_auc_variance(np.repeat(y, 5), np.repeat(a, 5), np.repeat(groups, 5))
    assert auc5[0] == pytest.approx(auc[0]) and variance5[0] == pytest.approx(variance[0])
    plain5 = stats.delong_covariance(np.repeat(y, 5), np.repeat(a, 5))[1][0, 0]
    assert plain5 < variance[0] / 4  # what treating the copies as independent would claim


def test_counting_path_matches_the_ranking_path_with_ties_and_mixed_clusters():
    rng = np.random.default_rng(24)
    groups = rng.integers(0, 90, 300)
    y, folds = (groups % 3 == 0).astype(int), groups % 5
    y[rng.random(300) < 0.1] ^= 1  # some clusters hold both classes
    a, b = np.round(rng.normal(size=300) + y, 1), rng.normal(size=300) + 0.5 * y
    fold, cluster = stats._codes(folds), stats._codes(groups)
    levels = np.stack([stats.within_fold_levels(a, fold), stats.within_fold_levels(b, fold)])[None]
    aucs_ab, difference, variance = stats._level_differences(y.astype(bool), levels, fold, cluster)
    test = stats.clustered_delong_test(y, a, b, groups, folds)
    aucs, expected_variance, _ = stats._difference_over_folds(y, np.vstack([a, b])[None], groups, folds)
    assert difference[0] == pytest.approx(test.difference) and variance[0] == pytest.approx(expected_variance[0])
    assert aucs_ab[0] == pytest.approx([test.auc_a, test.auc_b])


def test_permutation_test_p_values():
    y, good = _sample(200, 25, shift=2.0)
    groups, folds = (np.arange(200) // 4).astype(str), (np.arange(200) // 4) % 5
    weak = good + np.random.default_rng(26).normal(scale=3.0, size=200)
    test = stats.cluster_permutation_test(y, good, weak, groups, folds, n_permutations=199, seed=1)
    assert test.p_value == pytest.approx(1 / 200) and test.low > 0  # no swap beats the observed order
    clustered = stats.clustered_delong_test(y, good, weak, groups, folds)
    assert (test.auc_a, test.auc_b, test.low, test.high) == pytest.approx(
        (clustered.auc_a, clustered.auc_b, clustered.low, clustered.high))
    same = stats.cluster_permutation_test(y, good, good * 2 + 1, groups, folds, n_permutations=199, seed=1)
    assert same.difference == 0 and same.p_value == 1.0  # a monotone transform is the same scorer


def test_clustered_interval_contains_the_estimate_and_stays_inside_zero_one():
    y, a = _sample(100, 27, shift=3.0)  # AUC near 1
    groups, folds = np.arange(100).astype(str), np.arange(100) % 5
    interval = stats.clustered_auc_ci(y, a, groups, folds)
    assert 0.95 < interval.estimate < 1 and 0 < interval.low <= interval.estimate <= interval.high < 1
    perfect = stats.clustered_auc_ci(y, a + 10 * y, groups, folds)  # AUC 1 in every fold, variance 0
    n_small = min(y.sum(), (1 - y).sum())
    assert perfect.estimate == 1 and perfect.high == 1
    assert perfect.low == pytest.approx(0.025 ** (1 / n_small))  # Clopper–Pearson for n_small of n_small


def test_too_few_groups_names_the_fold_and_the_class():
    y = np.array([0, 0, 1, 1, 0, 1, 1])
    groups = np.array(["a", "b", "c", "d", "e", "f", "f"])
    folds = np.array([0, 0, 0, 0, 1, 1, 1])
    assert stats.too_few_groups(y, groups, folds, 2) == ("fold 1 holds 1 benign and 1 malignant groups; "
                                                         "a calibrated test needs at least 2 of each per fold")
    assert stats.too_few_groups(y[:4], groups[:4], folds[:4], 2) is None


def test_unknown_paired_test_is_refused():
    with pytest.raises(ValueError, match="unknown paired test 'wilcoxon'"):
        stats.paired_test("wilcoxon", [0, 1], [0.1, 0.2], [0.1, 0.2], ["a", "b"], [0, 0])


def test_holm_adjusts_each_row_of_a_matrix_on_its_own():
    rows = np.array([[0.01, 0.04, 0.03, 0.005, np.nan], [0.6, 0.9, np.nan, np.nan, np.nan]])
    adjusted = stats.holm(rows)
    assert adjusted[0, :4] == pytest.approx(stats.holm(rows[0])[:4]) and np.isnan(adjusted[0, 4])
    assert adjusted[1, :2] == pytest.approx([1.0, 1.0]) and np.isnan(adjusted[1, 2:]).all()


def test_equivalence_p_is_below_alpha_exactly_when_the_printed_interval_is_inside_the_margin():
    from scipy.stats import t as student

    difference, se, df, margin = np.array([0.0, 0.02, 0.02, -0.025]), np.array([0.01, 0.01, 0.02, 0.01]), 40, 0.05
    half = student.ppf(0.975, df) * se
    inside = (difference - half > -margin) & (difference + half < margin)
    assert list(stats.equivalence_p(difference, se, df, margin) < 0.05) == list(inside) == [True, True, False, True]


def test_vectorised_clustered_delong_equals_one_pair_at_a_time():
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(40) % 2, 3)
    groups, folds = np.repeat(np.arange(40), 3).astype(str), np.repeat(np.arange(40) // 2 % 4, 3)
    scores = y + rng.normal(size=(3, len(y)))
    pairs = np.stack([scores[[0, 1]], scores[[2, 0]]])
    aucs, se, p_value, df = stats.clustered_delong_tests(y, pairs, groups, folds)
    for (a, b), p, s in zip(pairs, p_value, se):
        one = stats.clustered_delong_test(y, a, b, groups, folds)
        assert (one.p_value, one.se, one.df) == pytest.approx((p, s, df))
