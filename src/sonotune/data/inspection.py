"""`sonotune inspect PATH`: check a dataset before a study and print its data report.

The kind (busi, mendeley, ddti, folder, csv) is detected from the layout unless given; the same loaders,
duplicate finder and checks as the `prepare` stage run, without decoding anything into the image cache.
`--manifest FILE` also writes the manifest CSV. The near-duplicate threshold is the kind's as the study sets it
(BUSI 8, DDTI 4: `KIND_NEAR_DISTANCE`), else prepare's default, unless `--near-distance` gives one.

After the data report comes the grouping audit: the `--closest` closest pairs of images the threshold did NOT
put in one group (are they really different lesions?), and every group that joins several of the source's own
groups (DDTI cases, Mendeley clips, patients), with the links that joined them (identical pixels, or near at a
distance) — what to look at before trusting a threshold on a new dataset.
"""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pandas as pd
from pydantic import TypeAdapter, ValidationError

from sonotune.config import DatasetSource, Prepare, default
from sonotune.data.duplicates import closest_pairs, hamming
from sonotune.data.manifest import build_manifest, check_study_ready, display_names, first_problem
from sonotune.data.data_report import data_report, format_report
from sonotune.data.sources import collect_records, detect_kind, unread_images
from sonotune.errors import ConfigError, DataError

KINDS = ("busi", "mendeley", "ddti", "folder", "csv")
# the near-duplicate thresholds the study sets for these kinds (configs/paper.yaml, measured in docs/datasets.md):
# BUSI's re-crops of one scan sit up to 8 bits apart, DDTI's whole-screen frames of unrelated cases within 5
KIND_NEAR_DISTANCE = {"busi": 8, "ddti": 4}


def default_near_distance(kind: str) -> int:
    """The kind's own near-duplicate threshold (`KIND_NEAR_DISTANCE`), else prepare's default."""
    return KIND_NEAR_DISTANCE.get(kind, default(Prepare, "near_duplicate_distance"))


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


def _joining_links(links: list[dict]) -> list[dict]:
    """The closest links that join the source groups into one (a minimum spanning tree, Kruskal's)."""
    parent: dict[str, str] = {}

    def root(case: str) -> str:
        while parent.setdefault(case, case) != case:
            case = parent[case]
        return case

    joining = []
    for link in sorted(links, key=lambda x: (not x["identical"], x["distance"], x["a"], x["b"])):
        a, b = (root(case) for case in link["cases"])
        if a != b:
            parent[a] = b
            joining.append(link)
    return joining


def grouping_audit(manifest: pd.DataFrame, closest: int) -> dict:
    """The closest pairs in different fold groups, and the fold groups spanning several source groups with the
    closest link between each two of them (distance in bits, identical pixels or not)."""
    hashed = manifest[manifest["phash"] != ""]
    names = dict(zip(manifest.index, display_names(manifest["path"].tolist())))
    pairs = [{"distance": d, "a": names[hashed.index[i]], "b": names[hashed.index[j]],
              "labels": [hashed["label"].iloc[i], hashed["label"].iloc[j]]}
             for d, i, j in closest_pairs(hashed["phash"].tolist(), hashed["group"].tolist(), closest)]
    spanning = []
    for group, rows in hashed.groupby("group", sort=True):
        if rows["source_group"].nunique() < 2:
            continue
        links = []
        for (i, a), (j, b) in itertools.combinations(rows.iterrows(), 2):
            if a["source_group"] != b["source_group"]:
                links.append({"distance": hamming(a["phash"], b["phash"]), "identical": a["sha256"] == b["sha256"],
                              "a": names[i], "b": names[j], "cases": sorted({a["source_group"], b["source_group"]})})
        spanning.append({"group": group, "source_groups": sorted(set(rows["source_group"])),
                         "links": _joining_links(links)})
    return {"closest_apart": pairs, "spanning": spanning}


def format_audit(audit: dict, near_distance: int | None) -> str:
    threshold = "exact duplicates only" if near_distance is None else f"near duplicates: ≤ {near_distance} bits"
    lines = [f"grouping audit ({threshold} of 64):",
             f"  closest pairs in different groups: {len(audit['closest_apart'])}"]
    lines += [f"    {p['distance']:2d} bits  {p['a']} ({p['labels'][0] or '-'}) ~ {p['b']} ({p['labels'][1] or '-'})"
              for p in audit["closest_apart"]]
    lines.append(f"  groups spanning several source groups (cases, clips, patients): {len(audit['spanning'])}")
    for item in audit["spanning"]:
        links = "; ".join(f"{x['a']} ~ {x['b']} " + ("identical pixels" if x["identical"] else f"{x['distance']} bits")
                          for x in item["links"])
        lines.append(f"    {' + '.join(item['source_groups'])}: {links}")
    return "\n".join(lines)


def inspect_dataset(path: Path, kind: str | None = None, manifest_out: str | None = None, strict: bool = False,
                    folds: int = 5, near_distance: int | None = None, keep_normal: bool = False,
                    classes: str | None = None, closest: int = 10) -> str:
    """Scan the dataset at `path` and return its report as text; DataError on input that cannot be used.
    `near_distance` None: the kind's threshold (`default_near_distance`); negative: exact duplicates only."""
    kind = kind or detect_kind(path)
    near_distance = default_near_distance(kind) if near_distance is None else near_distance
    source = source_for(path, kind, keep_normal, classes)
    with tempfile.TemporaryDirectory() as work_dir:
        records = collect_records(source, Path(work_dir), seed=0)
    threshold = None if near_distance < 0 else near_distance
    manifest = build_manifest(records, kind, threshold)
    if manifest_out:
        manifest.to_csv(manifest_out, index=False)
    problem = first_problem(manifest) if strict else None
    if problem:
        raise DataError(f"{problem} (--strict)")
    if folds:
        check_study_ready(manifest, folds, str(path))
    report = format_report(data_report(manifest), str(path))
    unread = unread_images(source)
    report += f"\nnot read: {unread}" if unread else ""
    return report + "\n" + format_audit(grouping_audit(manifest, closest), threshold)
