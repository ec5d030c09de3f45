"""Stage `prepare`: turn one configured dataset into a manifest and decoded uint8 image arrays.

Run as `sonotune prepare --dataset NAME [--params params.yaml]`. Writes `prepared/NAME/` (manifest.csv,
images_<size>.npy for every input size the study needs, generated source images for the phantom) and the
data report `prepared/NAME.json` (DVC metrics). The folder is built beside its target and moved into
place at the end, so a failure leaves the previous output intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from sonotune.config import Params
from sonotune.data.images import build_image_array
from sonotune.data.manifest import build_manifest, included, manifest_digest, read_manifest
from sonotune.data.sources import collect_records
from sonotune.models.backbones import get_spec

PREPARED_ROOT = Path("prepared")


def prepared_dir(dataset: str) -> Path:
    return PREPARED_ROOT / dataset


def input_sizes(params: Params) -> list[int]:
    """Every square input side the study's backbones need."""
    return sorted({params.finetune.input_size or get_spec(name).native_size for name in params.study.backbones})


def image_array_path(dataset: str, size: int) -> Path:
    return prepared_dir(dataset) / f"images_{size}.npy"


def data_report(manifest) -> dict:
    kept = included(manifest)
    excluded = manifest[manifest["excluded_reason"] != ""]
    return {
        "n_images": int(len(kept)),
        "n_groups": int(kept["group"].nunique()),
        "per_class": {label: int(n) for label, n in kept["label"].value_counts().sort_index().items()},
        "n_excluded": int(len(excluded)),
        "excluded_reasons": {r: int(n) for r, n in excluded["excluded_reason"].value_counts().items()},
        "width": {"min": int(kept["width"].min()), "max": int(kept["width"].max())},
        "height": {"min": int(kept["height"].min()), "max": int(kept["height"].max())},
        "digest": manifest_digest(manifest),
    }


def _final_path(path: Path, staging: Path, target: Path) -> str:
    return (target / path.relative_to(staging)).as_posix() if path.is_relative_to(staging) else path.as_posix()


def prepare_dataset(params: Params, dataset: str, root: Path = PREPARED_ROOT) -> dict:
    target = root / dataset
    staging = root / f".{dataset}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        records = collect_records(params.datasets[dataset], staging, params.seed)
        manifest = build_manifest(records, params.datasets[dataset].kind)
        paths = [Path(p) for p in included(manifest)["path"]]
        # generated sources (the phantom) live in the staging folder: record where they will end up
        manifest["path"] = [_final_path(Path(p), staging, target) for p in manifest["path"]]
        manifest.to_csv(staging / "manifest.csv", index=False)
        for size in input_sizes(params):
            np.save(staging / f"images_{size}.npy", build_image_array(paths, size, params.prepare.resize))
        report = data_report(manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    (root / f"{dataset}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def load_prepared(dataset: str, size: int):
    """The included manifest rows and their (n, size, size, 3) uint8 images, in the same order."""
    manifest = included(read_manifest(prepared_dir(dataset) / "manifest.csv"))
    images = np.load(image_array_path(dataset, size), mmap_mode="r")
    return manifest, images
