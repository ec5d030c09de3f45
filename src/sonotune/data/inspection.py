"""`sonotune inspect PATH`: check a dataset before a study and print its data report.

The kind (busi, mendeley, ddti, folder, csv) is detected from the layout unless given; the same loaders,
duplicate finder and checks as the `prepare` stage run, without decoding anything into the image cache.
`--manifest FILE` also writes the manifest CSV.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from sonotune.config import DatasetSource
from sonotune.data.manifest import build_manifest, check_study_ready, first_problem
from sonotune.data.data_report import data_report, format_report
from sonotune.data.sources import collect_records, detect_kind
from sonotune.errors import ConfigError, DataError

KINDS = ("busi", "mendeley", "ddti", "folder", "csv")


def parse_classes(text: str) -> dict[str, str]:
    """'benign=benign,pleomorphic=benign' → {'benign': 'benign', 'pleomorphic': 'benign'}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ConfigError(f"--classes: expected DIR=LABEL[,DIR=LABEL…] (got {text!r})")
    return {folder.strip(): label.strip() for folder, label in pairs}


def source_for(path: Path, kind: str, keep_normal: bool = False, classes: str | None = None):
    """The validated dataset-source configuration `inspect` builds from its command line."""
    raw: dict = {"kind": kind}
    if kind == "csv":
        raw["manifest"] = str(path)
    else:
        raw["root"] = str(path)
    if kind == "busi" and keep_normal:
        raw["normal"] = "benign"
    if classes is not None:
        if kind not in ("folder", "mendeley"):
            raise ConfigError(f"--classes: only for folder and mendeley sources (this is {kind})")
        raw["classes"] = parse_classes(classes)
    try:
        return TypeAdapter(DatasetSource).validate_python(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise ConfigError(f"{'.'.join(map(str, error['loc']))}: {error['msg']} (got {error['input']!r})") from None


def inspect_dataset(path: Path, kind: str | None = None, manifest_out: str | None = None, strict: bool = False,
                    folds: int = 5, near_distance: int = 6, keep_normal: bool = False,
                    classes: str | None = None) -> str:
    """Scan the dataset at `path` and return its report as text; DataError on input that cannot be used."""
    kind = kind or detect_kind(path)
    source = source_for(path, kind, keep_normal, classes)
    with tempfile.TemporaryDirectory() as work_dir:
        records = collect_records(source, Path(work_dir), seed=0)
    manifest = build_manifest(records, kind, None if near_distance < 0 else near_distance)
    if manifest_out:
        manifest.to_csv(manifest_out, index=False)
    problem = first_problem(manifest) if strict else None
    if problem:
        raise DataError(f"{problem} (--strict)")
    if folds:
        check_study_ready(manifest, folds, str(path))
    return format_report(data_report(manifest), str(path))
