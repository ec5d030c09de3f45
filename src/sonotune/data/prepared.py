"""Reading a prepared dataset: the manifest and decoded image arrays that `sonotune prepare` wrote.

`load_prepared(NAME, SIZE)` returns the included manifest rows and their uint8 images, refusing arrays that do
not belong to the manifest beside them (cache.json holds the manifest digest); `dataset_info(NAME)` gives the
digest and counts to record on the runs that use the dataset. Paths default to `prepared/` under the working
directory (the DVC output of the prepare stage); every function takes another `root`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sonotune.data.manifest import included, manifest_digest, read_manifest
from sonotune.errors import DataError

PREPARED_ROOT = Path("prepared")


def prepared_dir(dataset: str, root: Path = PREPARED_ROOT) -> Path:
    return root / dataset


def image_array_path(dataset: str, size: int, root: Path = PREPARED_ROOT) -> Path:
    return prepared_dir(dataset, root) / f"images_{size}.npy"


def load_prepared(dataset: str, size: int, root: Path = PREPARED_ROOT):
    """The included manifest rows and their (n, size, size, 3) uint8 images, in the same order."""
    folder = prepared_dir(dataset, root)
    if not (folder / "manifest.csv").is_file():
        raise DataError(f"{folder / 'manifest.csv'}: not found; run `sonotune prepare --dataset {dataset}` first")
    full = read_manifest(folder / "manifest.csv")
    rerun = f"rerun `sonotune prepare --dataset {dataset}` (or `dvc checkout prepared/{dataset}`)"
    try:
        key = json.loads((folder / "cache.json").read_text())
        digest, sizes = key["digest"], key["sizes"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{folder / 'cache.json'}: missing or damaged ({type(exc).__name__}); {rerun}") from None
    if digest != manifest_digest(full) or size not in sizes:
        raise DataError(f"{image_array_path(dataset, size, root)}: image cache does not match the manifest "
                        f"(or has no {size} px arrays); {rerun}")
    manifest = included(full)
    try:
        images = np.load(image_array_path(dataset, size, root), mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{image_array_path(dataset, size, root)}: missing or damaged "
                        f"({getattr(exc, 'strerror', None) or exc}); {rerun}") from None
    if images.shape[:1] != (len(manifest),):
        raise DataError(f"{image_array_path(dataset, size, root)}: holds {images.shape[0]} images, the manifest "
                        f"{len(manifest)}; {rerun}")
    return manifest, images


def dataset_info(dataset: str, root: Path = PREPARED_ROOT) -> dict:
    """Flat facts about a prepared dataset to record on the runs that use it (MLflow tags/params).

    Keys: dataset, source, digest, n_images, n_<label> per class, n_groups, n_excluded, n_duplicate_groups.
    For `mlflow.log_input`: `mlflow.data.from_pandas(manifest, name=dataset, digest=info["digest"])`.
    """
    path = root / f"{dataset}.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; run `sonotune prepare --dataset {dataset}` first")
    report = json.loads(path.read_text())
    info = {"dataset": dataset, "source": report["source"], "digest": report["digest"],
            "n_images": report["n_images"]}
    info.update({f"n_{label}": n for label, n in report["per_class"].items()})
    info.update({key: report[key] for key in ("n_groups", "n_excluded", "n_duplicate_groups")})
    return info


def dataset_info_if_prepared(dataset: str, root: Path = PREPARED_ROOT) -> dict | None:
    """`dataset_info`, or None when the dataset has not been prepared here (nothing to tag runs with)."""
    try:
        return dataset_info(dataset, root)
    except DataError:
        return None
