"""Data report of a manifest: counts per class, exclusions with reasons, duplicate groups, image sizes.

`data_report` gives the JSON the `prepare` stage writes as DVC metrics (numbers at the top, lists below);
`format_report` renders it as the text `sonotune inspect` prints.
"""

from __future__ import annotations

import pandas as pd

from sonotune.data.manifest import display_names, included, manifest_digest
from sonotune.data.records import LABEL_CONFLICT, is_problem, reason_kind


def _spread(values: pd.Series) -> dict:
    if values.empty:
        return {"min": 0, "median": 0, "max": 0}
    return {"min": int(values.min()), "median": float(values.median()), "max": int(values.max())}


def _label_conflict(rows: pd.DataFrame) -> bool:
    """Two labels among the cluster's images that are in the study or left out for that very conflict (not
    among images left out for another reason, e.g. BUSI's normal class)."""
    kinds = rows["excluded_reason"].map(reason_kind)
    candidates = rows[(rows["excluded_reason"] == "") | kinds.eq(LABEL_CONFLICT)]
    return candidates["label"].nunique() > 1


def duplicate_groups(manifest: pd.DataFrame, names: list[str]) -> list[dict]:
    groups = []
    for dup_id, rows in manifest[manifest["duplicate_group"] != ""].groupby("duplicate_group", sort=True):
        kept = rows[rows["excluded_reason"] == ""]
        groups.append({
            "id": dup_id,
            "kind": "exact" if rows["sha256"].nunique() == 1 else "near",
            "members": [names[i] for i in rows.index],
            "labels": sorted(set(rows["label"]) - {""}),
            "cross_class": len(set(rows["label"]) - {""}) > 1,
            "in_study": int(len(kept)),
            "label_conflict": _label_conflict(rows),
            "conflict_kept": _label_conflict(rows) and len(set(kept["label"])) > 1,
        })
    return groups


def data_report(manifest: pd.DataFrame) -> dict:
    kept = included(manifest)
    names = display_names(manifest["path"].tolist())
    excluded = manifest[manifest["excluded_reason"] != ""]
    duplicates = duplicate_groups(manifest, names)
    return {
        "source": str(manifest["source"].iloc[0]) if len(manifest) else "",
        "n_images": int(len(kept)),
        "n_groups": int(kept["group"].nunique()),
        "per_class": {label: int(n) for label, n in kept["label"].value_counts().sort_index().items()},
        "n_excluded": int(len(excluded)),
        "n_problems": sum(is_problem(r) for r in excluded["excluded_reason"]),
        "n_duplicate_groups": len(duplicates),
        "n_duplicate_images": int(sum(len(g["members"]) for g in duplicates)),
        "excluded_by_reason": {kind: int(n) for kind, n in excluded["excluded_reason"].map(reason_kind)
                               .value_counts().sort_index().items()},
        "width": _spread(kept["width"]),
        "height": _spread(kept["height"]),
        "modes": {mode: int(n) for mode, n in kept["mode"].value_counts().sort_index().items()},
        "digest": manifest_digest(manifest),
        "excluded": [{"path": names[i], "reason": r} for i, r in excluded["excluded_reason"].items()],
        "duplicate_groups": duplicates,
    }


def format_report(report: dict, title: str) -> str:
    classes = ", ".join(f"{label} {n}" for label, n in report["per_class"].items()) or "none"
    width, height = report["width"], report["height"]
    lines = [
        f"{title} ({report['source']}): {report['n_images']} images in the study ({classes}), "
        f"{report['n_groups']} independent groups, digest {report['digest']}",
        f"sizes: width {width['min']}–{width['max']} (median {width['median']:g}), height {height['min']}–"
        f"{height['max']} (median {height['median']:g}); modes "
        + ", ".join(f"{m} {n}" for m, n in report["modes"].items()),
        f"excluded: {report['n_excluded']}"
        + ("" if not report["excluded_by_reason"] else " (" + ", ".join(
            f"{kind} {n}" for kind, n in report["excluded_by_reason"].items()) + ")"),
    ]
    lines += [f"  {item['path']}: {item['reason']}" for item in report["excluded"]]
    lines.append(f"duplicate groups: {report['n_duplicate_groups']} ({report['n_duplicate_images']} images)")
    for group in report["duplicate_groups"]:
        flags = [group["kind"]] + (["cross-class"] if group["cross_class"] else []) + (
            [f"label conflict, {'kept' if group['conflict_kept'] else 'left out'}"] if group["label_conflict"] else [])
        lines.append(f"  {' = '.join(group['members'])}  [{', '.join(flags)}]")
    return "\n".join(lines)
