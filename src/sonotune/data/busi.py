"""BUSI source (Al-Dhabyani et al., Data in Brief 28, 2020): `Dataset_BUSI_with_GT/{benign,malignant,normal}`.

Images are `benign (N).png`; their lesion masks sit beside them as `benign (N)_mask.png`, `_mask_1.png`, … and
are never taken for images (a mask whose image is missing is excluded as a mask). `normal/` has no lesion:
left out by default (the paper's 437 benign + 210 malignant), or joined to benign with `normal: benign`.
BUSI has no patient ids: each image is its own group until the duplicate finder merges re-crops of one scan.
"""

from __future__ import annotations

import re
from pathlib import Path

from sonotune.config import BusiSource
from sonotune.data.records import (
    LEFT_OUT,
    MASK,
    MASK_STEM,
    Record,
    class_file_record,
    is_mask_name,
    reason,
    require_dir,
    visible_files,
)
from sonotune.errors import DataError
from sonotune.vocabulary import CLASS_NAMES

BUSI_NAME = re.compile(r"^(benign|malignant|normal) \(\d+\)_mask\.png$")  # how BUSI names its masks
LAYOUT = "Dataset_BUSI_with_GT/{benign,malignant,normal}/<class> (N).png"


def busi_root(root: Path) -> Path:
    """Accept the dataset folder itself or the folder that holds `Dataset_BUSI_with_GT`."""
    nested = root / "Dataset_BUSI_with_GT"
    return nested if nested.is_dir() else root


def _class_records(class_dir: Path, label: str, left_out: str = "") -> list[Record]:
    files = visible_files(class_dir)
    image_stems = {p.stem for p in files if not is_mask_name(p)}
    records = []
    for path in files:
        if is_mask_name(path):
            owner = MASK_STEM.sub("", path.stem)
            if owner not in image_stems:  # a mask on its own where an image should be
                records.append(Record(path, label, path.stem, reason(MASK, f"mask of '{owner}', whose image is missing")))
            continue
        record = class_file_record(path, label, path.stem)
        if left_out and not record.excluded_reason:
            record = Record(path, label, path.stem, left_out)
        records.append(record)
    if not left_out and not any(not is_mask_name(p) for p in files):
        raise DataError(f"{class_dir}: class folder holds no images (only masks or nothing)")
    return records


def busi_records(source: BusiSource, work_dir: Path, seed: int) -> list[Record]:
    root = busi_root(require_dir(Path(source.root), LAYOUT))
    records = []
    for class_name in CLASS_NAMES:
        if not (root / class_name).is_dir():
            raise DataError(f"{root / class_name}: class folder not found (expected {LAYOUT})")
        records += _class_records(root / class_name, class_name)
    normal = root / "normal"
    if source.normal == "benign":
        if not normal.is_dir():
            raise DataError(f"{normal}: class folder not found (normal: benign asks for it)")
        records += _class_records(normal, "benign")
    elif normal.is_dir():
        # kept in the manifest (excluded) so duplicates across benign/normal are still reported
        records += _class_records(normal, "normal", reason(LEFT_OUT, "normal (set normal: benign to keep it)"))
    return records
