import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from sonotune.cv import (
    REPEAT_SEED_STRIDE, RULES, fold_plan, outer_folds, refit_split, repeat_seed, rules, svm_fit_rows,
)
from sonotune.vocabulary import PROTOCOLS


def _data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    groups = np.array([f"g{i // 2}" for i in range(n)])  # pairs of images share a group
    y[1::2] = y[::2]  # a group has one label
    return y, groups


@pytest.mark.parametrize("protocol", ["leakage_free", "paper"])
def test_folds_are_disjoint_and_grouped_unless_paper(protocol):
    y, groups = _data()
    plan = fold_plan(y, groups, protocol, n_splits=5, val_fraction=0.2, seed=3)
    tests = np.concatenate([f.test for f in plan])
    assert sorted(tests) == list(range(len(y)))  # every image is tested exactly once
    straddling = sum(len(set(groups[fold.test]) & set(groups[fold.fit])) for fold in plan)
    assert (straddling == 0) == rules(protocol).grouped_folds  # the paper's folds do split groups
    for fold in plan:
        assert not set(fold.test) & set(fold.fit)
        if protocol == "leakage_free":
            assert not set(fold.val) & set(fold.test)
            assert not set(groups[fold.val]) & set(groups[fold.fit])
            assert len(fold.val) > 0 and set(y[fold.val]) == {0, 1}
            assert sorted(fold.train) == sorted(np.concatenate([fold.fit, fold.val]))
        else:
            assert np.array_equal(fold.val, fold.test)
            assert np.array_equal(fold.train, fold.fit)


def test_same_seed_same_folds():
    y, groups = _data()
    a = fold_plan(y, groups, "leakage_free", 5, 0.2, seed=11)
    b = fold_plan(y, groups, "leakage_free", 5, 0.2, seed=11)
    c = fold_plan(y, groups, "leakage_free", 5, 0.2, seed=12)
    assert all(np.array_equal(x.test, z.test) and np.array_equal(x.val, z.val) for x, z in zip(a, b))
    assert not all(np.array_equal(x.test, z.test) for x, z in zip(a, c))


def test_no_test_image_or_group_reaches_training_or_validation():
    y, groups = _data(n=120, seed=5)
    for fold in fold_plan(y, groups, "leakage_free", n_splits=4, val_fraction=0.25, seed=0):
        assert not set(fold.test) & set(fold.train)
        assert not set(groups[fold.test]) & set(groups[fold.train])
        assert not set(groups[fold.val]) & set(groups[fold.test])


def test_the_paper_selects_on_the_test_fold_and_trains_on_the_rest():
    y, groups = _data(n=120, seed=5)
    for fold in fold_plan(y, groups, "paper", n_splits=4, val_fraction=0.25, seed=0):
        assert np.array_equal(fold.val, fold.test) and not set(fold.test) & set(fold.fit)
        assert sorted(np.concatenate([fold.fit, fold.test])) == list(range(len(y)))


@pytest.mark.parametrize("protocol, splitter", [("leakage_free", StratifiedGroupKFold), ("paper", StratifiedKFold)])
def test_outer_folds_are_the_protocols_splitter(protocol, splitter):
    """leakage_free: StratifiedGroupKFold over the groups; paper: plain StratifiedKFold, as the paper did. Only
    labels, groups, the protocol and the seed enter, so every backbone and strategy shares the folds."""
    y, groups = _data()
    plan = fold_plan(y, groups, protocol, 5, 0.2, seed=7)
    grouping = {"groups": groups} if splitter is StratifiedGroupKFold else {}
    expected = splitter(n_splits=5, shuffle=True, random_state=7).split(np.zeros(len(y)), y, **grouping)
    assert [sorted(test) for _, test in expected] == [f.test.tolist() for f in plan]
    assert all(np.array_equal(a.test, b.test) for a, b in zip(plan, fold_plan(y, groups, protocol, 5, 0.2, seed=7)))


def test_ungrouped_outer_folds_ignore_the_groups():
    y, groups = _data()
    singletons = np.arange(len(y)).astype(str)
    for (_, a), (_, b) in zip(outer_folds(y, groups, 5, 3, grouped=False), outer_folds(y, singletons, 5, 3, grouped=False)):
        assert np.array_equal(a, b)


def test_every_protocol_has_its_rules_and_an_unknown_one_is_refused():
    assert tuple(RULES) == PROTOCOLS
    assert rules("paper").epoch_on_test_fold and not rules("leakage_free").epoch_on_test_fold
    # the paper's conditions, all of them: no grouping, label conflicts kept; leakage_free: the opposite
    assert not rules("paper").grouped_folds and rules("paper").keep_label_conflicts
    assert rules("leakage_free").grouped_folds and not rules("leakage_free").keep_label_conflicts
    with pytest.raises(ValueError, match="protocol must be one of leakage_free, paper"):
        rules("sloppy")


def test_svm_fit_rows_leave_the_test_fold_out_unless_paper():
    folds = np.array([0, 1, 2, 0, 1, 2])
    assert svm_fit_rows("leakage_free", folds, 1).tolist() == [0, 2, 3, 5]
    assert svm_fit_rows("paper", folds, 1).tolist() == list(range(6))


def test_the_refit_split_trains_on_every_group_but_the_validation_ones():
    y, groups = _data()
    fold = refit_split(y, groups, val_fraction=0.2, seed=3)
    assert len(fold.test) == 0 and sorted(np.concatenate([fold.fit, fold.val])) == list(range(len(y)))
    assert not set(groups[fold.fit]) & set(groups[fold.val])
    assert 0.1 < len(fold.val) / len(y) < 0.3 and set(y[fold.val]) == {0, 1}


def _same_fold(a, b) -> bool:
    return all(np.array_equal(getattr(a, part), getattr(b, part)) for part in ("fit", "val", "test"))


@pytest.mark.parametrize("protocol", ["leakage_free", "paper"])
def test_repeats_are_fresh_splits_and_repeat_0_is_the_single_split(protocol):
    y, groups = _data()
    single = fold_plan(y, groups, protocol, 5, 0.2, seed=3)
    plan = fold_plan(y, groups, protocol, 5, 0.2, seed=3, repeats=3)
    assert [f.key for f in plan] == [(r, k) for r in range(3) for k in range(5)]
    assert all(_same_fold(a, b) and a.key == b.key for a, b in zip(single, plan[:5]))  # repeat 0 = repeats: 1
    for repeat in range(3):
        folds = [f for f in plan if f.repeat == repeat]
        assert sorted(np.concatenate([f.test for f in folds])) == list(range(len(y)))  # each image tested once
        if rules(protocol).grouped_folds:
            assert all(not set(groups[f.test]) & set(groups[f.fit]) for f in folds)
        # repeat r is the single split drawn with repeat_seed(seed, r)
        alone = fold_plan(y, groups, protocol, 5, 0.2, seed=repeat_seed(3, repeat))
        assert all(_same_fold(a, b) for a, b in zip(alone, folds))
    tests = [tuple(sorted(map(tuple, (f.test for f in plan if f.repeat == r)))) for r in range(3)]
    assert len(set(tests)) == 3  # three different partitions


def test_repeat_seeds_never_collide_with_a_fold_seed():
    """Fold k of repeat r trains with repeat_seed + k: the stride exceeds the largest fold count (cv.n_splits ≤ 20)."""
    seeds = {repeat_seed(42, r) + k for r in range(10) for k in range(20)}
    assert len(seeds) == 200 and repeat_seed(42, 0) == 42 and REPEAT_SEED_STRIDE > 20
