"""Manifest: one row per image with its label, group, content hash, size, mode and exclusion reason.

The manifest is what every later stage reads; the order of its rows is the order of the cached image
arrays. `manifest_digest` fingerprints the dataset (paths, labels, groups, pixel hashes) for tracking.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from sonotune.data.sources import Record

COLUMNS = ["path", "label", "group", "sha256", "width", "height", "mode", "source", "excluded_reason"]
LABELS = {"benign": 0, "malignant": 1}


def describe_image(path: Path) -> dict:
    """Header facts and a hash of the decoded pixels (identical pixels → identical hash, whatever the file)."""
    with Image.open(path) as image:
        image.load()
        pixels = np.asarray(image)
        return {
            "sha256": hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest(),
            "width": image.width,
            "height": image.height,
            "mode": image.mode,
        }


def build_manifest(records: list[Record], source: str) -> pd.DataFrame:
    rows = [
        {"path": record.path.as_posix(), "label": record.label, "group": record.group, "source": source,
         "excluded_reason": "", **describe_image(record.path)}
        for record in records
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


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
    return pd.read_csv(path, dtype={"group": str, "excluded_reason": str}, keep_default_na=False)
