"""The report's paired test and AUC interval, proven by simulation under a known truth (NumPy only).

Each simulated study is one dataset shape scored by two scorers on the same images, split into 5 folds by
group and class. Scores: `delta · y + u_c + v_c^s + e_i` with u_c a group (lesion) effect shared by both
scorers, v_c^s a scorer-specific group effect (two models err differently on a lesion, consistently across its
frames) and e_i image noise — the hard null, where images of one group are not independent *in the paired
difference*. Equal deltas: no true difference (the rejection rate is the test's error rate); unequal: power.
The true AUC of a scorer is Φ(delta / sqrt(2 · total variance)), which the intervals must cover.

The report's default (`report.paired_test: clustered_delong`) and the `permutation` option must hold α = 0.05
within 0.075 in every shape; plain DeLong must be seen to fail where frames of a lesion repeat.

Rerun and print the table of docs/statistics.md (every test on every shape, and the group bootstrap interval):
    PYTHONPATH=src python tests/test_stats_simulation.py
"""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np
import pytest
from scipy.stats import norm

from sonotune import stats
from sonotune.config import Report
from sonotune.stats import MIN_GROUPS_PER_CLASS, paired_test

N_STUDIES = 500  # Monte Carlo SE of a 0.05 rate: 0.0097
N_POWER_STUDIES = 200  # power is measured, not bounded: SE ≤ 0.035
N_PERMUTATIONS = 99  # (B + 1) · α an integer: the Monte Carlo p-value adds nothing to the level at α = 0.05
ALPHA = 0.05
SHARED_SD, SCORER_SD, IMAGE_SD, DELTA = 1.0, 0.7, 0.5, 1.5
POWER_DELTA = 0.5  # scorer a's extra separation in the power studies

# shape: (images per group, malignant groups, benign groups); "ddti" draws 1–3 images per case
SHAPES = {
    "busi": (1, 213, 427),  # 640 single images, a third malignant
    "mendeley": (5, 30, 20),  # 50 lesions × 5 frames
    "ddti": ((1, 3), 250, 50),  # 300 cases of 1–3 images, 83 % malignant
    "minimum": (5, 10, 10),  # 2 groups of each class per fold: the report's minimum
}


def simulate_study(shape: str, rng: np.random.Generator, delta_a: float = DELTA, scorer_sd_b: float = SCORER_SD):
    """One study: labels, two scorers' scores, group ids and folds (5, stratified by group class)."""
    size, malignant, benign = SHAPES[shape]
    n_groups = malignant + benign
    sizes = rng.integers(size[0], size[1] + 1, n_groups) if isinstance(size, tuple) else np.full(n_groups, size)
    group_class = (np.arange(n_groups) < malignant).astype(int)
    group_fold = np.empty(n_groups, dtype=int)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(group_class == label))
        group_fold[members] = np.arange(len(members)) % 5
    group = np.repeat(np.arange(n_groups), sizes)
    y = group_class[group]
    shared = rng.normal(0, SHARED_SD, n_groups)[group]
    # scorer b may split the same total variance differently between group and image: equal AUCs, but the
    # pair (a, b) is then not exchangeable
    image_sd_b = np.sqrt(SCORER_SD ** 2 + IMAGE_SD ** 2 - scorer_sd_b ** 2)
    a = delta_a * y + shared + rng.normal(0, SCORER_SD, n_groups)[group] + rng.normal(0, IMAGE_SD, len(y))
    b = DELTA * y + shared + rng.normal(0, scorer_sd_b, n_groups)[group] + rng.normal(0, image_sd_b, len(y))
    return y, a, b, group.astype(str), group_fold[group]


def true_auc(delta: float) -> float:
    return float(norm.cdf(delta / np.sqrt(2 * (SHARED_SD ** 2 + SCORER_SD ** 2 + IMAGE_SD ** 2))))


DEFAULT = Report().paired_test


@lru_cache(maxsize=None)
def rejection_rates(shape: str, delta_a: float = DELTA, scorer_sd_b: float = SCORER_SD,
                    methods: tuple[str, ...] = (DEFAULT,), n_studies: int = N_STUDIES) -> dict[str, float]:
    """Share of `n_studies` studies each test rejects at ALPHA, and the coverage of scorer a's AUC interval."""
    rng = np.random.default_rng([7, len(shape), int(100 * delta_a), int(100 * scorer_sd_b)])
    rejected = dict.fromkeys(methods, 0)
    covered = 0
    for study in range(n_studies):
        y, a, b, groups, folds = simulate_study(shape, rng, delta_a, scorer_sd_b)
        for method in methods:
            test = paired_test(method, y, a, b, groups, folds, ALPHA, N_PERMUTATIONS, seed=study)
            rejected[method] += test.p_value < ALPHA
        interval = stats.clustered_auc_ci(y, a, groups, folds, ALPHA)
        covered += interval.low <= true_auc(delta_a) <= interval.high
    return {m: r / n_studies for m, r in rejected.items()} | {"coverage": covered / n_studies}


def null_rates(shape: str) -> dict[str, float]:
    """The null studies of one shape (shared by the level and coverage tests): the default test, the permutation
    option, and on Mendeley plain DeLong."""
    return rejection_rates(shape, methods=(DEFAULT, "permutation") + (("delong",) if shape == "mendeley" else ()))


def test_the_default_paired_test_is_the_clustered_delong_test():
    assert DEFAULT == "clustered_delong"


@pytest.mark.parametrize("shape", ["busi", "mendeley", "ddti", "minimum"])
@pytest.mark.parametrize("method", [DEFAULT, "permutation"])
def test_group_aware_tests_hold_their_level_under_the_hard_null(shape, method):
    assert null_rates(shape)[method] <= 0.075


def test_default_test_holds_its_level_when_the_scorers_are_not_exchangeable():
    """Same AUCs, but scorer b's errors sit more in the image than in the lesion than scorer a's."""
    assert rejection_rates("mendeley", scorer_sd_b=0.2)[DEFAULT] <= 0.075


def test_plain_delong_rejects_far_too_often_when_frames_of_a_lesion_repeat():
    """The old default treats the 5 frames of a lesion as 5 independent images: the test must be able to fail."""
    assert null_rates("mendeley")["delong"] > 0.2


@pytest.mark.parametrize("shape, at_least", [("busi", 0.8), ("mendeley", 0.12), ("ddti", 0.3)])
def test_default_test_detects_a_real_difference(shape, at_least):
    rates = rejection_rates(shape, delta_a=DELTA + POWER_DELTA, n_studies=N_POWER_STUDIES)
    assert rates[DEFAULT] >= at_least


@pytest.mark.parametrize("shape", ["busi", "mendeley", "ddti", "minimum"])
def test_auc_interval_covers_the_true_auc(shape):
    assert 0.93 <= null_rates(shape)["coverage"] <= 0.985


def test_below_the_minimum_the_report_gives_no_p_value():
    rng = np.random.default_rng(0)
    y, a, b, groups, folds = simulate_study("minimum", rng)
    assert stats.too_few_groups(y, groups, folds, MIN_GROUPS_PER_CLASS) is None
    lone = np.flatnonzero((folds == 0) & (y == 0))
    keep = np.ones(len(y), bool)
    keep[lone[groups[lone] != groups[lone[0]]]] = False  # fold 0 keeps one benign lesion
    reason = stats.too_few_groups(y[keep], groups[keep], folds[keep], MIN_GROUPS_PER_CLASS)
    assert reason.startswith("fold 0 holds 1 benign and 2 malignant groups")


# ---------------------------------------------------------------- the table of docs/statistics.md


def _table() -> None:  # pragma: no cover - a report for humans, run by hand
    methods = ("clustered_delong", "permutation", "delong", "bootstrap")
    print(f"{N_STUDIES} studies per cell, α = {ALPHA}, permutation B = {N_PERMUTATIONS}, bootstrap B = 199")
    for shape in SHAPES:
        for label, kwargs in (("null", {}), ("power", {"delta_a": DELTA + POWER_DELTA})):
            start = time.process_time()
            rates = rejection_rates(shape, methods=methods, n_studies=N_STUDIES, **kwargs)
            print(f"{shape:9s} {label:6s} " + "  ".join(f"{k} {v:.3f}" for k, v in rates.items())
                  + f"  ({time.process_time() - start:.0f} s)")
    rates = rejection_rates("mendeley", scorer_sd_b=0.2, methods=methods)
    print("mendeley  null, not exchangeable  " + "  ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    rng = np.random.default_rng(3)
    covered = 0
    for study in range(N_STUDIES):
        y, a, _, groups, folds = simulate_study("mendeley", rng)
        interval = stats.bootstrap_auc_ci(y, a, groups, folds, 199, ALPHA, seed=study)
        covered += interval.low <= true_auc(DELTA) <= interval.high
    print(f"group-bootstrap percentile interval, mendeley: coverage {covered / N_STUDIES:.3f}")


if __name__ == "__main__":
    _table()
