"""CSV source: a manifest file `path,label[,group]` for sets that come with patient ids (BUS-BRA, BrEaST, …).

Paths are relative to `root` (default: the CSV's folder) and must stay under it; the label column goes through
the `labels` mapping of params; `group` (a patient or case id) defaults to one group per image. A missing
column, a path outside the root or a path listed twice stops with the CSV's line; a missing file or an
unknown label excludes that image with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sonotune.config import CsvSource
from sonotune.data.records import MISSING_FILE, UNKNOWN_LABEL, Record, class_file_record, reason
from sonotune.errors import DataError

REQUIRED = ("path", "label")


def read_listing(csv_path: Path) -> pd.DataFrame:
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: manifest CSV not found")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{csv_path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {', '.join(missing)} "
                        f"(expected path,label[,group]; found {','.join(table.columns)})")
    if table.empty:
        raise DataError(f"{csv_path}: no rows")
    return table


def _resolve_under(root: Path, relative: str, where: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"{where}: path '{relative}' is outside the root {root}")
    return root / path.relative_to(root.resolve())


def csv_records(source: CsvSource, work_dir: Path, seed: int) -> list[Record]:
    csv_path = Path(source.manifest)
    table = read_listing(csv_path)
    root = Path(source.root) if source.root is not None else csv_path.parent
    if not root.is_dir():
        raise DataError(f"{root}: dataset root not found (the folder {csv_path.name}'s paths are relative to)")
    has_group = "group" in table.columns
    first_line: dict[Path, int] = {}
    records = []
    for line, row in zip(range(2, len(table) + 2), table.itertuples(index=False)):  # line 1 is the header
        where = f"{csv_path}: line {line}"
        if not row.path.strip():
            raise DataError(f"{where}: empty path")
        path = _resolve_under(root, row.path.strip(), where)
        if path in first_line:
            raise DataError(f"{where}: '{row.path}' is listed again (first on line {first_line[path]})")
        first_line[path] = line
        group = (row.group.strip() if has_group else "") or path.relative_to(root).as_posix()
        label = source.labels.get(row.label.strip())
        if label is None:
            records.append(Record(path, row.label, group, reason(
                UNKNOWN_LABEL, f"'{row.label}' on line {line} of {csv_path.name} is not one of "
                               f"{', '.join(sorted(source.labels))}")))
        elif not path.is_file():
            records.append(Record(path, label, group, reason(MISSING_FILE, f"listed on line {line} of {csv_path.name}")))
        else:
            records.append(class_file_record(path, label, group))
    return records
