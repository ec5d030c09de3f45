"""Dataset registry: every source kind turns its configuration into a list of image records.

A record is (path, label, group, excluded_reason); `manifest.build_manifest` adds hashes, sizes, duplicates and
the remaining exclusions. Kinds: `busi`, `ddti`, `mendeley` (class folders of `us<N>.bmp`; the frames of one
clip share a group), `folder` (any `<root>/<class>/*` set, e.g. the salivary-glands set), `csv` (a
`path,label[,group]` file) and `phantom` (reads the set `sonotune phantom --dataset NAME` wrote to its `root`, the
demo's data/phantom versioned by data.dvc; without a `root` it renders its images with `phantom.write_phantom`
first, so every kind ends up as files on disk). `detect_kind` guesses the kind of a
path for `sonotune inspect`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from sonotune.config import FolderSource, MendeleySource, PhantomSource
from sonotune.vocabulary import CLASS_NAMES, IMAGE_SUFFIXES
from sonotune.data.busi import BUSI_NAME, busi_records, busi_root
from sonotune.data.csvfile import csv_records
from sonotune.data.ddti import IMAGE_NAME, ddti_records
from sonotune.data.phantom import phantom_folder_records, write_phantom
from sonotune.data.records import Record, class_folder_records, require_dir
from sonotune.errors import DataError

MENDELEY_FRAME = re.compile(r"^us(\d+)$", re.IGNORECASE)  # Rodrigues' frames: us1.bmp … us250.bmp


def _folder_records(source: FolderSource | MendeleySource, work_dir: Path, seed: int) -> list[Record]:
    root = require_dir(Path(source.root), "<root>/<class>/<images>")
    records = []
    for class_name, label in sorted(source.classes.items()):
        records += class_folder_records(root / class_name, label, f"{class_name}/")
    return records


def clip_group(number: int, frames: int) -> str:
    """The clip of frame `us<number>`: 'us1-us5' for us1…us5 when clips are 5 frames long."""
    first = (number - 1) // frames * frames + 1
    return f"us{first}-us{first + frames - 1}" if frames > 1 else f"us{number}"


def _mendeley_records(source: MendeleySource, work_dir: Path, seed: int) -> list[Record]:
    """Class folders of `us<N>.bmp`: frames of one clip (N = 1–5, 6–10, …) share a group; other names keep
    their own. Clips stored twice under two numbers are merged later, as near duplicates."""
    records = []
    for record in _folder_records(source, work_dir, seed):
        match = MENDELEY_FRAME.match(record.path.stem)
        group = clip_group(int(match.group(1)), source.clip_frames) if match else record.group
        records.append(Record(record.path, record.label, group, record.excluded_reason))
    return records


def _phantom_records(source: PhantomSource, work_dir: Path, seed: int) -> list[Record]:
    if source.root:
        return phantom_folder_records(source, seed)
    root = work_dir / "source"
    paths = write_phantom(root, source.n_benign, source.n_malignant, source.image_size, seed)
    return [Record(p, p.parent.name, f"{p.parent.name}/{p.stem}") for p in paths]


SOURCES: dict[str, Callable[..., list[Record]]] = {
    "busi": busi_records,
    "csv": csv_records,
    "ddti": ddti_records,
    "folder": _folder_records,
    "mendeley": _mendeley_records,
    "phantom": _phantom_records,
}


def collect_records(source, work_dir: Path, seed: int) -> list[Record]:
    """Records of one configured dataset; `work_dir` receives any files the source has to generate."""
    return SOURCES[source.kind](source, Path(work_dir), seed)


def _class_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_kind(path: Path) -> str:
    """The source kind a path looks like: csv file, BUSI, DDTI, Mendeley (BMP class folders) or folder."""
    if path.is_file():
        if path.suffix.lower() == ".csv":
            return "csv"
        raise DataError(f"{path}: not a dataset folder or a .csv manifest")
    require_dir(path, "a dataset folder or a .csv manifest")
    classes = {p.name.lower(): p for p in _class_dirs(busi_root(path))}
    if set(CLASS_NAMES) <= set(classes) and any(
            BUSI_NAME.match(f.name) for f in classes["benign"].iterdir()):
        return "busi"
    files = [p for p in path.iterdir() if p.is_file()]
    if any(p.suffix.lower() == ".xml" for p in files) and any(
            IMAGE_NAME.match(p.stem) and p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        return "ddti"
    classes = _class_dirs(path)
    if classes:
        images = [f for c in classes for f in c.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES]
        if images and all(f.suffix.lower() == ".bmp" for f in images):
            return "mendeley"
        return "folder"
    raise DataError(f"{path}: cannot tell the dataset kind (no class folders, no <case>.xml); pass --kind")


def unread_images(source) -> str:
    """What a `folder`/`mendeley` source does not read (images in sub-folders of a class folder, class folders
    not listed in `classes:`), as one sentence; "" when nothing is left out or the kind reads everything."""
    if source.kind not in ("folder", "mendeley") or not Path(source.root).is_dir():
        return ""
    root = Path(source.root)
    listed = {root / name for name in source.classes}
    left_out: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if path.is_file() and not hidden and path.suffix.lower() in IMAGE_SUFFIXES and path.parent not in listed:
            folder = path.parent.relative_to(root).as_posix() + "/"
            left_out[folder] = left_out.get(folder, 0) + 1
    if not left_out:
        return ""
    where = ", ".join(f"{folder} ({n})" for folder, n in left_out.items())
    return (f"{sum(left_out.values())} images under {root} are not read: only the files directly inside the "
            f"class folders listed in `classes:` ({', '.join(sorted(source.classes))}) are: {where}")
