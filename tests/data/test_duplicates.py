"""Duplicate finder: the content hash, exact and near pairs, clusters, merged fold groups, the audit's pairs."""

import imagehash
import numpy as np
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from sonotune.data.duplicates import (closest_pairs, content_box, duplicate_clusters, exact_pairs, hamming,
                                      merged_groups, near_pairs, perceptual_hash)

SCREEN = (560, 360)  # a DDTI-like scanner screen
BOX = (140, 8, 420, 308)  # where the scan sits on it (left, top, right, bottom)


def tissue(seed: int) -> np.ndarray:
    """A scan-like picture: smooth structures (what a perceptual hash sees) under speckle, never black."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=(BOX[3] - BOX[1], BOX[2] - BOX[0])), 12)
    field = (field - field.min()) / (field.max() - field.min())
    return (40 + 160 * field + rng.integers(0, 30, size=field.shape)).astype(np.uint8)


def screen(scan: np.ndarray, layout: int) -> Image.Image:
    """The scan on a black screen with burned-in text, a grey bar, depth dots and side markers, placed as
    one of two layouts."""
    frame = Image.new("L", SCREEN, 0)
    frame.paste(Image.fromarray(scan), BOX[:2])
    draw = ImageDraw.Draw(frame)
    text_x, bar_y = (450, 150) if layout == 0 else (20, 40)
    for row, line in enumerate(["P100", "12L6", "9.0", "31fps", "DR65", "TIRADS 4B"]):
        draw.text((text_x, 10 + 14 * row), line, fill=255)
    draw.rectangle((8 if layout == 0 else 540, bar_y, 16 if layout == 0 else 548, bar_y + 100), fill=200)
    for y in range(20, 300, 50 if layout == 0 else 35):
        draw.ellipse((125, y, 129, y + 4), fill=255)
    draw.text((40 if layout == 0 else 480, 330), "DER" if layout == 0 else "IZQ", fill=255)
    return frame


def test_the_content_box_is_the_scan_not_the_screen_around_it():
    for layout in (0, 1):
        box = content_box(np.asarray(screen(tissue(0), layout)))
        assert all(abs(a - b) <= 2 for a, b in zip(box, BOX)), box
    bare = tissue(1)
    assert content_box(bare) == (0, 0, bare.shape[1], bare.shape[0])  # an already cropped image stays whole
    assert content_box(np.zeros((50, 60), np.uint8)) == (0, 0, 60, 50)  # nothing bright: the whole frame


def test_the_content_hash_follows_the_scan_and_ignores_the_screen_layout():
    scans = [tissue(seed) for seed in range(6)]
    same = [hamming(perceptual_hash(screen(s, 0)), perceptual_hash(screen(s, 1))) for s in scans]
    bare = [hamming(perceptual_hash(screen(s, 0)), perceptual_hash(Image.fromarray(s))) for s in scans]
    assert max(same) <= 2 and max(bare) <= 2
    content = [hamming(perceptual_hash(screen(a, 0)), perceptual_hash(screen(b, 0)))
               for i, a in enumerate(scans) for b in scans[i + 1:]]
    assert min(content) > 6  # different scans stay apart on one screen layout
    # what the whole-screen hash does: one scan on two layouts drifts apart, the screen weighs in every bit
    whole = [int(imagehash.phash(screen(s, 0)) - imagehash.phash(screen(s, 1))) for s in scans]
    assert np.mean(whole) > np.mean(same) + 4


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


def test_closest_pairs_list_only_pairs_in_different_groups_closest_first():
    hashes = ["0000000000000000", "0000000000000001", "0000000000000003", "000000000000000f", "", "00000000000000ff"]
    groups = ["a", "a", "b", "c", "d", "e"]
    assert closest_pairs(hashes, groups, 3) == [(1, 1, 2), (2, 0, 2), (2, 2, 3)]
    assert closest_pairs(hashes, groups, 0) == []
    everything = closest_pairs(hashes, groups, 100)
    assert len(everything) == 10 - 1 - 0  # 5 valid hashes: 10 pairs, less the one inside group a
    assert [d for d, _, _ in everything] == sorted(d for d, _, _ in everything)
