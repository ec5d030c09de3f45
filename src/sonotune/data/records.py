"""What every dataset source yields: image records with a label, a group and, when left out, the reason why.

An exclusion reason reads `<kind>: <detail>`. The kind says whether it is a choice of the study (a class left
out, an unlabelled case) or a problem with the input (a corrupt file, a mask, an unknown label…); with
`prepare.strict` / `--strict` the first problem stops the run instead of being excluded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sonotune.errors import DataError
from sonotune.vocabulary import IMAGE_SUFFIXES

MASK_STEM = re.compile(r"_mask(_\d+)?$", re.IGNORECASE)  # BUSI's `benign (4)_mask`, `benign (4)_mask_1`, …

# choices of the study: not a problem with the data
LEFT_OUT = "class left out"
UNLABELLED = "no label"
# problems with the input: excluded by default, stop the run under --strict
CORRUPT = "corrupt image"
NOT_IMAGE = "not an image"
MASK = "mask"
MISSING_FILE = "missing file"
UNKNOWN_LABEL = "unknown label"
BAD_ANNOTATION = "unreadable annotation"
MISSING_ANNOTATION = "missing annotation"
LABEL_CONFLICT = "label conflict"
TOO_SMALL = "too small"
PROBLEMS = (CORRUPT, NOT_IMAGE, MASK, MISSING_FILE, UNKNOWN_LABEL, BAD_ANNOTATION, MISSING_ANNOTATION, LABEL_CONFLICT,
            TOO_SMALL)


@dataclass(frozen=True)
class Record:
    path: Path
    label: str  # "benign" | "malignant" for images in the study; any text (or "") for excluded ones
    group: str  # images of one group always share a fold (a patient, a case, one image)
    excluded_reason: str = ""  # "" = in the study


def reason(kind: str, detail: str) -> str:
    return f"{kind}: {detail}"


def reason_kind(text: str) -> str:
    return text.split(":", 1)[0]


def is_problem(text: str) -> bool:
    return reason_kind(text) in PROBLEMS


def is_mask_name(path: Path) -> bool:
    return bool(MASK_STEM.search(path.stem))


def require_dir(root: Path, expected: str) -> Path:
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (expected {expected})")
    return root


def natural_key(path: Path) -> list:
    """Sort key that puts `benign (2)` before `benign (10)`."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def visible_files(folder: Path) -> list[Path]:
    """Entries of a folder in natural order, without hidden files (.DS_Store, ._*) and sub-folders; broken
    symlinks, FIFOs and other special files are kept, so that they are excluded with a reason, not dropped."""
    return sorted((p for p in folder.iterdir() if not p.is_dir() and not p.name.startswith(".")), key=natural_key)


def special_file_reason(path: Path) -> str:
    """Why a class folder's entry that is not a regular file cannot be read ("" for a regular file). Such a
    file is never opened: reading a FIFO would block forever."""
    if path.is_file():
        return ""
    if path.is_symlink():
        try:
            path.resolve(strict=True)
        except RuntimeError:
            return reason(MISSING_FILE, "a symlink loop")
        except OSError as exc:
            if "loop" in str(exc).lower() or getattr(exc, "errno", None) == 40:
                return reason(MISSING_FILE, "a symlink loop")
            return reason(MISSING_FILE, f"a symlink to a missing file ({path.readlink()})")
    return reason(NOT_IMAGE, "not a regular file (a FIFO, socket or device)")


def class_file_record(path: Path, label: str, group: str) -> Record:
    """A file found in a class folder: an image, or excluded as a mask, a non-image or a special file."""
    if special := special_file_reason(path):
        return Record(path, label, group, special)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return Record(path, label, group, reason(NOT_IMAGE, f"suffix '{path.suffix}' is not one of "
                                                            f"{', '.join(sorted(IMAGE_SUFFIXES))}"))
    if is_mask_name(path):
        return Record(path, label, group, reason(MASK, "a segmentation mask where an image should be"))
    return Record(path, label, group)


def class_folder_records(class_dir: Path, label: str, group_prefix: str) -> list[Record]:
    """Every file of one class folder; a folder with no image at all is an error, not an empty class."""
    if not class_dir.is_dir():
        raise DataError(f"{class_dir}: class folder not found")
    records = [class_file_record(p, label, f"{group_prefix}{p.stem}") for p in visible_files(class_dir)]
    if not any(r.excluded_reason == "" for r in records):
        raise DataError(f"{class_dir}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return records
