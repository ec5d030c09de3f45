"""Duplicate finder: exact and near pairs, clusters and merged fold groups."""

import numpy as np

from sonotune.data.duplicates import duplicate_clusters, exact_pairs, merged_groups, near_pairs


def test_exact_pairs_chain_equal_hashes_only():
    assert exact_pairs(["a", "b", "a", "", "", "a"]) == [(0, 2), (0, 5)]


def test_near_pairs_respect_the_hamming_threshold():
    hashes = ["0000000000000000", "0000000000000007", "00000000000000ff", "ffffffffffffffff", ""]
    assert near_pairs(hashes, 3) == [(0, 1)]
    assert near_pairs(hashes, 8) == [(0, 1), (0, 2), (1, 2)]
    assert near_pairs(hashes, 64) == [(i, j) for i in range(4) for j in range(i + 1, 4)]  # "" never pairs


def test_near_pairs_across_blocks_match_brute_force(monkeypatch):
    import sonotune.data.duplicates as duplicates

    values = [int(v) for v in np.random.default_rng(0).integers(0, 1 << 12, size=9)]
    hashes = [f"{v:016x}" for v in values]
    for threshold in (1, 3, 6):
        expected = [(i, j) for i in range(9) for j in range(i + 1, 9) if bin(values[i] ^ values[j]).count("1") <= threshold]
        assert sorted(near_pairs(hashes, threshold)) == expected
        monkeypatch.setattr(duplicates, "BLOCK", 2)  # the same pairs when computed block by block
        assert sorted(near_pairs(hashes, threshold)) == expected
        monkeypatch.setattr(duplicates, "BLOCK", 2048)


def test_clusters_join_exact_and_near_duplicates():
    sha = ["x", "y", "x", "z", "w"]
    phash = ["0000000000000000", "ffffffffffffffff", "0000000000000000", "fffffffffffffffe", "0f0f0f0f0f0f0f0f"]
    assert duplicate_clusters(sha, phash, None) == [[0, 2]]
    assert duplicate_clusters(sha, phash, 1) == [[0, 2], [1, 3]]


def test_merged_groups_take_duplicates_and_source_groups_together():
    base = ["case1", "case1", "case2", "case3", "case4"]
    groups = merged_groups(base, [[1, 3]])  # an image of case1 duplicated in case3
    assert groups == ["case1+case3", "case1+case3", "case2", "case1+case3", "case4"]
    assert len(set(merged_groups(base, []))) == 4
    assert np.array_equal(np.unique(merged_groups(["a", "b"], [[0, 1]])), ["a+b"])
