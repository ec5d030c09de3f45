"""DDTI source (Pedraza et al., SIPAIM 2015): one flat folder of `<case>_<k>.jpg` images and `<case>.xml` files.

The XML's `<tirads>` (2, 3, 4a, 4b, 4c, 5 or empty) labels every image of the case through the `tirads` mapping
of params (default the study's: 2, 3 benign; 4a–5 malignant). An empty score leaves the case unlabelled; a score
outside the mapping, a missing or unreadable XML excludes the case's images with the reason. Group = case number,
so the folds keep a case's images together.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from sonotune.config import DdtiSource
from sonotune.data.records import (
    BAD_ANNOTATION,
    MISSING_ANNOTATION,
    NOT_IMAGE,
    UNKNOWN_LABEL,
    UNLABELLED,
    Record,
    class_file_record,
    reason,
    require_dir,
    special_file_reason,
    visible_files,
)
from sonotune.errors import DataError
from sonotune.vocabulary import IMAGE_SUFFIXES

IMAGE_NAME = re.compile(r"^(\d+)_(\d+)$")
LAYOUT = "one folder of <case>_<k>.jpg images and <case>.xml files"


def case_label(xml_path: Path, tirads: dict[str, str]) -> tuple[str, str]:
    """(label, exclusion reason) of one case from its XML; exactly one of the two is non-empty."""
    if not xml_path.is_file():
        return "", reason(MISSING_ANNOTATION, f"no {xml_path.name} beside the image")
    try:
        score = ET.parse(xml_path).getroot().findtext("tirads")
    except (ET.ParseError, OSError, UnicodeDecodeError) as exc:
        return "", reason(BAD_ANNOTATION, f"{xml_path.name} is not readable XML ({exc})")
    if score is None:
        return "", reason(BAD_ANNOTATION, f"{xml_path.name} has no <tirads> element")
    score = score.strip().lower()
    tirads = {key.strip().lower(): label for key, label in tirads.items()}
    if not score:
        return "", reason(UNLABELLED, f"empty <tirads> in {xml_path.name}")
    if score not in tirads:
        return "", reason(UNKNOWN_LABEL, f"TI-RADS '{score}' in {xml_path.name} is not one of "
                                         f"{', '.join(sorted(tirads))} (the tirads mapping)")
    return tirads[score], ""


def ddti_records(source: DdtiSource, work_dir: Path, seed: int) -> list[Record]:
    root = require_dir(Path(source.root), LAYOUT)
    labels: dict[str, tuple[str, str]] = {}
    records = []
    for path in visible_files(root):
        if path.suffix.lower() == ".xml":
            continue
        if special := special_file_reason(path):  # never opened (a FIFO would block)
            records.append(Record(path, "", path.stem, special))
            continue
        match = IMAGE_NAME.match(path.stem)
        if path.suffix.lower() not in IMAGE_SUFFIXES or not match:
            record = class_file_record(path, "", path.stem)
            if not record.excluded_reason:
                record = Record(path, "", path.stem, reason(NOT_IMAGE, f"name is not <case>_<k>{path.suffix}"))
            records.append(record)
            continue
        case = match.group(1)
        if case not in labels:
            labels[case] = case_label(root / f"{case}.xml", source.tirads)
        label, excluded = labels[case]
        records.append(Record(path, label, case, excluded))
    if not labels:
        raise DataError(f"{root}: no <case>_<k>.jpg images found (expected {LAYOUT})")
    return records
