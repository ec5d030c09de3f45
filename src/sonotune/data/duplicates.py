"""Duplicate finder: exact (same decoded pixels) and near (64-bit perceptual hashes within a Hamming distance).

Duplicates form a graph; its connected components (scipy's union-find) are the *duplicate clusters*. A cluster
whose images in the study carry two labels is a label conflict. For the folds, duplicate edges and the sources'
own groups (a DDTI case, a patient id) are merged into one component per group, so a re-crop of one scan or a
case that shares an image with another case never straddles train and test.

The default distance, 6 of 64 bits, was calibrated on the shared samples: it finds every listed BUSI and DDTI
duplicate and Mendeley's 5-frame clips of one lesion; the closest pair it keeps apart is 12 bits apart in the
BUSI and DDTI samples, 8 in Mendeley.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

BLOCK = 2048  # rows of the pairwise distance matrix computed at once (BLOCK × n bytes)


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


def near_pairs(phash: Sequence[str], max_distance: int) -> list[tuple[int, int]]:
    """Every pair (i < j) of valid hashes whose Hamming distance is at most `max_distance`."""
    valid = np.array([bool(h) for h in phash])
    hashes = np.array([hash_to_int(h) for h in phash], dtype=np.uint64)
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
