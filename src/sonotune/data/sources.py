"""Dataset registry: every source kind turns its configuration into a list of labelled image records.

A record is (path, label, group); `manifest.build_manifest` adds hashes, sizes and exclusions. The phantom
source first renders its images with `phantom.write_phantom`, so every kind ends up as files on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sonotune.config import FolderSource, PhantomSource
from sonotune.data.phantom import write_phantom
from sonotune.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass(frozen=True)
class Record:
    path: Path
    label: str  # "benign" | "malignant"
    group: str  # images of one group always share a fold


def _folder_records(source: FolderSource, work_dir: Path, seed: int) -> list[Record]:
    root = Path(source.root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (expected <root>/<class>/<images>)")
    records = []
    for class_name, label in sorted(source.classes.items()):
        class_dir = root / class_name
        if not class_dir.is_dir():
            raise DataError(f"{class_dir}: class folder not found")
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{class_dir}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        records += [Record(p, label, f"{class_name}/{p.stem}") for p in files]
    return records


def _phantom_records(source: PhantomSource, work_dir: Path, seed: int) -> list[Record]:
    root = work_dir / "source"
    paths = write_phantom(root, source.n_benign, source.n_malignant, source.image_size, seed)
    return [Record(p, p.parent.name, f"{p.parent.name}/{p.stem}") for p in paths]


SOURCES: dict[str, Callable[..., list[Record]]] = {
    "folder": _folder_records,
    "phantom": _phantom_records,
}


def collect_records(source, work_dir: Path, seed: int) -> list[Record]:
    """Records of one configured dataset; `work_dir` receives any files the source has to generate."""
    records = SOURCES[source.kind](source, Path(work_dir), seed)
    labels = {r.label for r in records}
    if labels != {"benign", "malignant"}:
        raise DataError(f"dataset has only the class(es) {sorted(labels)}; benign and malignant are both needed")
    return records
