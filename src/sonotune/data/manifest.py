"""Manifest: one row per file a source found, with its label, fold group, hashes, size, mode and exclusion reason.

`source_group` is the group the source gave (a DDTI case, a Mendeley clip, a patient id, else the image);
`group` is the fold group: source groups merged with their duplicates (`duplicates.merged_groups`).

`build_manifest` decodes every image once (in threads: PIL releases the GIL while decoding) to hash its pixels
(sha256 of the RGB array, so one picture saved twice matches), take its perceptual hash and reject what cannot
be an image (undecodable, truncated, a black-and-white mask). It then finds duplicates, excludes label
conflicts and merges fold groups. The manifest is what every later stage reads; the order of its included
rows is the order of the cached image arrays. `manifest_digest` fingerprints the dataset for tracking.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from sonotune.data.duplicates import duplicate_clusters, merged_groups, perceptual_hash
from sonotune.data.images import MIN_SIDE, to_rgb_uint8
from sonotune.data.records import (
    CORRUPT,
    TOO_SMALL,
    LABEL_CONFLICT,
    MASK,
    MISSING_FILE,
    NOT_IMAGE,
    Record,
    is_problem,
    reason,
    reason_kind,
)
from sonotune.errors import DataError
from sonotune.vocabulary import CLASS_NAMES

COLUMNS = ["path", "label", "group", "sha256", "phash", "width", "height", "mode", "source", "excluded_reason",
           "duplicate_group", "source_group"]
LABELS = {name: index for index, name in enumerate(CLASS_NAMES)}  # benign 0, malignant 1
UNSCANNED = (MISSING_FILE, NOT_IMAGE)  # exclusions whose file is not worth opening


MID_GREY = (32, 223)  # a mask's pixels sit outside this band, even saved as JPEG, blurred or downscaled
MASK_MID_GREY_MAX = 0.10  # measured: masks of the BUSI sample ≤ 0.027 mid-grey after JPEG/blur/resize; images ≥ 0.33


def mid_grey_share(grey: Image.Image) -> float:
    """Share of pixels in the mid-grey band: speckle fills an ultrasound image with them, a mask has only edges."""
    pixels = np.asarray(grey)
    return float(((pixels >= MID_GREY[0]) & (pixels <= MID_GREY[1])).mean())


def looks_like_mask(grey: Image.Image) -> bool:
    """Black and white, up to the mid-greys that JPEG, smoothing or resizing leave along a mask's edges."""
    return mid_grey_share(grey) <= MASK_MID_GREY_MAX


def describe_image(path: Path) -> dict:
    """Header facts, pixel and perceptual hashes of one image, and `problem` when it cannot be used."""
    try:
        with Image.open(path) as image:
            image.load()
            mode, width, height = image.mode, image.width, image.height
            rgb = to_rgb_uint8(image)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return {"problem": reason(CORRUPT, f"cannot decode ({exc})")}
    if min(width, height) < MIN_SIDE:
        return {"problem": reason(TOO_SMALL, f"{width}×{height} px, under {MIN_SIDE} px a side: no scan"),
                "width": width, "height": height, "mode": mode}
    pixels = np.asarray(rgb)
    grey = rgb.convert("L")
    facts = {
        "sha256": hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest(),
        "phash": perceptual_hash(grey),
        "width": width,
        "height": height,
        "mode": mode,
    }
    if looks_like_mask(grey):
        facts["problem"] = reason(MASK, f"only black and white pixels ({mid_grey_share(grey):.1%} mid-grey, an "
                                        "ultrasound image has far more): a segmentation mask where an image should be")
    return facts


def scan_images(paths: list[Path], workers: int | None = None) -> list[dict]:
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(tqdm(pool.map(describe_image, paths), total=len(paths), desc="scanning images", unit="img",
                         leave=False, disable=None))


def display_names(paths: list[str]) -> list[str]:
    """Paths relative to their common folder: short names for reports."""
    if not paths:
        return []
    common = os.path.commonpath([os.path.dirname(p) for p in paths])
    return [os.path.relpath(p, common) for p in paths]


def _rows(records: list[Record], source: str) -> pd.DataFrame:
    scannable = [i for i, r in enumerate(records) if reason_kind(r.excluded_reason) not in UNSCANNED]
    facts = dict(zip(scannable, scan_images([records[i].path for i in scannable])))
    rows = []
    for index, record in enumerate(records):
        fact = facts.get(index, {})
        excluded = record.excluded_reason or fact.get("problem", "")
        rows.append({"path": record.path.as_posix(), "label": record.label, "group": record.group,
                     "sha256": fact.get("sha256", ""), "phash": fact.get("phash", ""),
                     "width": fact.get("width", 0), "height": fact.get("height", 0), "mode": fact.get("mode", ""),
                     "source": source, "excluded_reason": excluded, "duplicate_group": "",
                     "source_group": record.group})
    return pd.DataFrame(rows, columns=COLUMNS)


def _mark_duplicates(manifest: pd.DataFrame, clusters: list[list[int]], label_conflicts: str) -> None:
    """Number the duplicate clusters; exclude (by default) the images of a cluster that carries two labels."""
    names = display_names(manifest["path"].tolist())
    for number, cluster in enumerate(clusters, start=1):
        manifest.loc[cluster, "duplicate_group"] = f"dup{number:03d}"
        in_study = [i for i in cluster if manifest.at[i, "excluded_reason"] == ""]
        if manifest.loc[in_study, "label"].nunique() < 2 or label_conflicts == "keep":
            continue
        for i in in_study:
            others = [f"{names[j]} ({manifest.at[j, 'label']})" for j in in_study
                      if manifest.at[j, "label"] != manifest.at[i, "label"]]
            manifest.at[i, "excluded_reason"] = reason(LABEL_CONFLICT, f"same image as {', '.join(others)}")


def build_manifest(records: list[Record], source: str, near_distance: int | None = 6,
                   label_conflicts: str = "exclude") -> pd.DataFrame:
    """The manifest of a source's records: scanned, duplicates found, conflicts excluded, groups merged."""
    if not records:
        raise DataError("the dataset source found no files")
    manifest = _rows(records, source)
    decoded = manifest["sha256"] != ""
    index = np.flatnonzero(decoded.to_numpy())
    clusters = [[int(index[i]) for i in c] for c in duplicate_clusters(
        manifest.loc[decoded, "sha256"].tolist(), manifest.loc[decoded, "phash"].tolist(), near_distance)]
    _mark_duplicates(manifest, clusters, label_conflicts)
    manifest["group"] = merged_groups(manifest["group"].tolist(), clusters)
    return manifest


def first_problem(manifest: pd.DataFrame) -> str | None:
    """'<path>: <reason>' of the first problem exclusion (what --strict stops on), or None."""
    problems = manifest[manifest["excluded_reason"].map(is_problem)]
    if problems.empty:
        return None
    row = problems.iloc[0]
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{row['path']}: {row['excluded_reason']}{more}"


def check_study_ready(manifest: pd.DataFrame, n_splits: int, where: str, grouped: bool = True) -> None:
    """Both classes present, and each with at least one independent group (an image, for ungrouped folds) per
    fold."""
    kept = included(manifest)
    labels = set(kept["label"])
    if labels != set(LABELS):
        raise DataError(f"{where}: only the class(es) {sorted(labels)} remain after exclusions; "
                        f"benign and malignant are both needed")
    for label, rows in kept.groupby("label"):
        n_groups = rows["group"].nunique() if grouped else len(rows)
        if n_groups < n_splits:
            raise DataError(f"{where}: class {label} has {len(rows)} images in {n_groups} independent groups, "
                            f"fewer than the {n_splits} folds (cv.n_splits)")


def included(manifest: pd.DataFrame) -> pd.DataFrame:
    """Rows that take part in the study, with a fresh 0..n-1 index matching the cached arrays."""
    reasons = manifest["excluded_reason"].fillna("")
    return manifest[reasons == ""].reset_index(drop=True)


def label_vector(manifest: pd.DataFrame) -> np.ndarray:
    return manifest["label"].map(LABELS).to_numpy(dtype=np.int64)


def manifest_digest(manifest: pd.DataFrame) -> str:
    key = manifest[["path", "label", "group", "sha256", "excluded_reason"]].fillna("").to_csv(index=False)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False).astype({"width": int, "height": int})
