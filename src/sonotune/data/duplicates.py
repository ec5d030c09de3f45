"""Duplicate finder: exact (same decoded pixels) and near (64-bit perceptual hashes of the image *content*).

The perceptual hash is taken on the content box of a frame (`content_box`): the longest run of rows and of
columns that are mostly non-black, so the scanner's screen around the image (black borders, burned-in text,
side markers, scale marks, the grey bar) does not dominate the hash. On the shared DDTI sample a hash of the
whole frame put unrelated cases 12 bits apart; the content hash puts them at least 18 apart (docs/datasets.md).

Duplicates form a graph; its connected components (scipy's union-find) are the *duplicate clusters*. A cluster
whose images in the study carry two labels is a label conflict. For the folds, duplicate edges and the sources'
own groups (a DDTI case, a Mendeley clip, a patient id) are merged into one component per group, so a re-crop
of one scan or a case that shares an image with another case never straddles train and test.

The threshold is per dataset (`datasets.<name>.near_duplicate_distance`, else `prepare.near_duplicate_distance`,
default 6 of 64 bits); the measured distances behind each dataset's value are in docs/datasets.md. For audit,
`closest_pairs` lists the closest pairs the threshold kept apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BLOCK = 2048  # rows of the pairwise distance matrix computed at once (BLOCK × n bytes)
HASH_SIDE = 128  # images are box-reduced to about this side before the perceptual hash
DARK = 16  # grey level at or below which a pixel counts as screen background
CONTENT_SHARE = 0.4  # a row/column belongs to the image content when this share of its pixels is brighter
GAP_SHARE = 0.1  # dark stretches shorter than this share of a side do not split the content (a cyst, a shadow)
MIN_CONTENT = 0.25  # a content run shorter than this share of a side is not trusted: keep the whole side


def _longest_run(mask: np.ndarray, gap: int) -> tuple[int, int]:
    """[start, stop) of the longest run of True in `mask`, after closing False gaps of at most `gap` items."""
    on = np.flatnonzero(mask)
    if not len(on):
        return 0, 0
    breaks = np.flatnonzero(np.diff(on) > gap + 1)
    starts = np.r_[on[0], on[breaks + 1]]
    stops = np.r_[on[breaks], on[-1]] + 1
    best = int(np.argmax(stops - starts))
    return int(starts[best]), int(stops[best])


def _content_span(profile: np.ndarray) -> tuple[int, int]:
    start, stop = _longest_run(profile >= CONTENT_SHARE, int(GAP_SHARE * len(profile)))
    return (start, stop) if stop - start >= MIN_CONTENT * len(profile) else (0, len(profile))


def content_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the image content of a greyscale frame: rows and columns mostly brighter
    than the screen background, refined once (columns within the content rows, and back)."""
    bright = grey > DARK
    top, bottom, left, right = 0, bright.shape[0], 0, bright.shape[1]
    for _ in range(2):
        left, right = _content_span(bright[top:bottom].mean(axis=0))
        top, bottom = _content_span(bright[:, left:right].mean(axis=1))
    return left, top, right, bottom


def perceptual_hash(grey: Image.Image) -> str:
    """64-bit pHash of the content box as 16 hex digits. A box reduction first makes it ~10× faster than
    imagehash's Lanczos resize of the full image (the hashes differ by at most 2 bits on the BUSI sample)."""
    content = grey.crop(content_box(np.asarray(grey)))
    return str(imagehash.phash(content.reduce(max(1, min(content.size) // HASH_SIDE))))


def hash_to_int(phash: str) -> np.uint64:
    return np.uint64(int(phash, 16)) if phash else np.uint64(0)


def exact_pairs(sha256: Sequence[str]) -> list[tuple[int, int]]:
    """Edges chaining the images of equal pixel hash (a chain is enough for connected components)."""
    first: dict[str, int] = {}
    pairs = []
    for index, digest in enumerate(sha256):
        if not digest:
            continue
        if digest in first:
            pairs.append((first[digest], index))
        else:
            first[digest] = index
    return pairs


def _hashes(phash: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([bool(h) for h in phash]), np.array([hash_to_int(h) for h in phash], dtype=np.uint64)


def hamming(a: str, b: str) -> int:
    return int(np.bitwise_count(hash_to_int(a) ^ hash_to_int(b)))


def near_pairs(phash: Sequence[str], max_distance: int) -> list[tuple[int, int]]:
    """Every pair (i < j) of valid hashes whose Hamming distance is at most `max_distance`."""
    valid, hashes = _hashes(phash)
    pairs = []
    for start in range(0, len(hashes), BLOCK):
        block = hashes[start:start + BLOCK]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, :])
        rows, cols = np.nonzero(distance <= max_distance)
        rows = rows + start
        keep = (rows < cols) & valid[rows] & valid[cols]
        pairs += zip(rows[keep].tolist(), cols[keep].tolist())
    return pairs


def components(n: int, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """Connected-component id of each of n nodes of an undirected graph given by its edges."""
    if not pairs:
        return np.arange(n)
    rows, cols = np.array(pairs).T
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def duplicate_clusters(sha256: Sequence[str], phash: Sequence[str], max_distance: int | None) -> list[list[int]]:
    """Clusters (of 2 or more indices, each sorted) of exact and near duplicates."""
    pairs = exact_pairs(sha256)
    if max_distance is not None:
        pairs += near_pairs(phash, max_distance)
    ids = components(len(sha256), pairs)
    members: dict[int, list[int]] = {}
    for index, cid in enumerate(ids):
        members.setdefault(int(cid), []).append(index)
    return sorted((m for m in members.values() if len(m) > 1), key=lambda m: m[0])


def merged_groups(base_groups: Sequence[str], clusters: Sequence[Sequence[int]]) -> list[str]:
    """Each image's fold group: its source group merged with the groups of its duplicates ('a+b' names)."""
    n = len(base_groups)
    first: dict[str, int] = {}
    pairs = []
    for index, group in enumerate(base_groups):
        pairs.append((first.setdefault(group, index), index))
    for cluster in clusters:
        pairs += [(cluster[0], other) for other in cluster[1:]]
    ids = components(n, pairs)
    names: dict[int, set[str]] = {}
    for cid, group in zip(ids, base_groups):
        names.setdefault(int(cid), set()).add(group)
    return ["+".join(sorted(names[int(cid)])) for cid in ids]


def closest_pairs(phash: Sequence[str], groups: Sequence[str], k: int) -> list[tuple[int, int, int]]:
    """The `k` closest pairs (distance, i, j), i < j, of valid hashes in *different* groups: what the threshold
    kept apart, for audit. Ties are broken by index, so the list is reproducible."""
    valid, hashes = _hashes(phash)
    codes = np.unique(np.asarray(groups), return_inverse=True)[1]
    best: list[tuple[int, int, int]] = []
    for start in range(0, len(hashes), BLOCK):
        block = hashes[start:start + BLOCK]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, :]).astype(np.int16)
        rows = np.arange(start, start + len(block))
        apart = (rows[:, None] < np.arange(len(hashes))[None, :]) & (codes[rows][:, None] != codes[None, :])
        apart &= valid[rows][:, None] & valid[None, :]
        r, c = np.nonzero(apart)
        d = distance[r, c]
        keep = np.lexsort((c, r, d))[:k]
        best = sorted(best + [(int(d[i]), int(r[i]) + start, int(c[i])) for i in keep])[:k]
    return best
