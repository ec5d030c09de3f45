"""Stage `prepare`: turn one configured dataset into a manifest, a data report and decoded uint8 image arrays.

Run as `sonotune prepare --dataset NAME [--params params.yaml] [--strict]`. Writes `prepared/NAME/`
(manifest.csv, images_<size>.npy for every input size the study needs, cache.json with the key of those
arrays, generated source images for the phantom) and the data report `prepared/NAME.json` (DVC metrics:
counts per class, exclusions with reasons, duplicate groups, sizes). The folder is built beside its target
and moved into place at the end, so a failure leaves the previous output intact.

The near-duplicate threshold is the dataset's own (`datasets.NAME.near_duplicate_distance`) or
`prepare.near_duplicate_distance`. The protocol's rules (`cv.RULES`) decide what enters the study: under
`protocol: paper` an image found under two labels stays in it under each label (the paper's conditions), and
the readiness check counts images, not groups, per fold.

The image arrays are the decoded image cache: each image is decoded, made RGB and resized once per input
size, and the arrays are keyed by (dataset, size, resize policy, manifest digest) in cache.json, so
`data.prepared.load_prepared` refuses arrays that do not belong to the manifest beside them and no epoch
decodes a file.

What the stage leaves out is said, never silent: `exclusion_summary` counts the excluded images by reason and
names the report that lists them; `data.sources.unread_images` names the images a `folder`/`mendeley` source
never reads (sub-folders of a class folder, class folders missing from `classes:`).

`output_bytes` is the disk-space estimate every preflight checks (`errors.require_space`): the image caches
exactly (one uint8 byte per pixel and channel, every input size), counting every file under a source's folder
(every line of a `csv` manifest) as an image (an over-count), rendered phantom images at their raw size (PNG is smaller), plus a fixed
`OUTPUT_RESERVE_BYTES` for models, features, reports and MLflow artifacts: not a bound, a clear minimum.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from sonotune.config import Params, near_duplicate_distance
from sonotune.cv import rules
from sonotune.data.images import build_image_array
from sonotune.data.data_report import data_report
from sonotune.data.manifest import build_manifest, check_study_ready, first_problem, included
from sonotune.data.prepared import PREPARED_ROOT, image_array_path
from sonotune.data.sources import collect_records
from sonotune.errors import DataError, require_space, require_writable
from sonotune.layout import OUTPUT_RESERVE_BYTES, staged_dir
from sonotune.models.backbones import get_spec


def input_sizes(params: Params) -> list[int]:
    """Every square input side the study's backbones need."""
    return sorted({params.finetune.input_size or get_spec(name).native_size for name in params.study.backbones})


def _image_count(source) -> tuple[int, int]:
    """(images the source may hold, of those the ones prepare renders itself) — files counted, not decoded."""
    if source.kind == "phantom":
        n = source.n_benign + source.n_malignant
        return n, 0 if source.root else n
    if source.kind == "csv":  # one image per row; a manifest that cannot be read is reported by the scan itself
        manifest = Path(source.manifest)
        return (sum(1 for _ in manifest.open(errors="replace")) if manifest.is_file() else 0), 0
    root = Path(source.root)
    return (sum(1 for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0), 0


def output_bytes(params: Params, datasets: list[str]) -> int:
    """Disk the outputs of `datasets` need: their image caches and rendered images, plus the fixed reserve."""
    per_image = sum(3 * size * size for size in input_sizes(params))
    total = OUTPUT_RESERVE_BYTES
    for name in datasets:
        source = params.datasets[name]
        n_images, n_rendered = _image_count(source)
        total += n_images * per_image + n_rendered * 3 * getattr(source, "image_size", 0) ** 2
    return total


def exclusion_summary(report: dict, dataset: str, root: Path = PREPARED_ROOT) -> str:
    """`N excluded (reason n, …): see <report> "excluded"` — or `0 excluded`."""
    if not report["n_excluded"]:
        return "0 excluded"
    reasons = ", ".join(f"{kind} {n}" for kind, n in report["excluded_by_reason"].items())
    return f"{report['n_excluded']} excluded ({reasons}; each with its reason under \"excluded\" in {root / dataset}.json)"


def scan_dataset(source, work_dir: Path, seed: int, near_distance: int | None = 6, label_conflicts: str = "exclude",
                 strict: bool = False) -> pd.DataFrame:
    """The manifest of one dataset source; under `strict` the first bad image stops with its reason."""
    manifest = build_manifest(collect_records(source, work_dir, seed), source.kind, near_distance, label_conflicts)
    problem = first_problem(manifest) if strict else None
    if problem:
        raise DataError(f"{problem} (--strict)")
    return manifest


def _final_path(path: Path, staging: Path, target: Path) -> str:
    return (target / path.relative_to(staging)).as_posix() if path.is_relative_to(staging) else path.as_posix()


def _write_cache(staging: Path, dataset: str, params: Params, paths: list[Path], digest: str) -> None:
    sizes = input_sizes(params)
    for size in sizes:
        np.save(staging / image_array_path(dataset, size).name, build_image_array(paths, size, params.prepare.resize))
    key = {"dataset": dataset, "sizes": sizes, "resize": params.prepare.resize, "digest": digest}
    (staging / "cache.json").write_text(json.dumps(key, indent=2) + "\n")


def prepare_dataset(params: Params, dataset: str, root: Path = PREPARED_ROOT, strict: bool | None = None) -> dict:
    """Manifest, report and image cache of `dataset`; returns the report. `strict` overrides prepare.strict."""
    if dataset not in params.datasets:
        raise DataError(f"datasets.{dataset}: not defined in params (defined: {', '.join(sorted(params.datasets))})")
    source = params.datasets[dataset]
    require_writable(root, "the prepared dataset")
    require_space(root, output_bytes(params, [dataset]), f"the prepared dataset {dataset} and the models after it",
                  "nothing was prepared")
    target = root / dataset
    with staged_dir(target) as staging:
        protocol = rules(params.protocol)
        label_conflicts = "keep" if protocol.keep_label_conflicts else params.prepare.label_conflicts
        manifest = scan_dataset(source, staging, params.seed, near_duplicate_distance(source, params.prepare),
                                label_conflicts, params.prepare.strict if strict is None else strict)
        check_study_ready(manifest, params.cv.n_splits, f"datasets.{dataset}", protocol.grouped_folds)
        paths = [Path(p) for p in included(manifest)["path"]]
        # generated sources (the phantom) live in the staging folder: record where they will end up
        manifest["path"] = [_final_path(Path(p), staging, target) for p in manifest["path"]]
        manifest.to_csv(staging / "manifest.csv", index=False)
        report = data_report(manifest)
        _write_cache(staging, dataset, params, paths, report["digest"])
    (root / f"{dataset}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
