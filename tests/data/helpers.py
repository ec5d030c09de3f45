"""Generators of small image sets (random speckle, so no two images are near duplicates) for data tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def speckle(seed: int, size: tuple[int, int] = (48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 255, size=(size[1], size[0]), dtype=np.uint8)


def write_image(path: Path, seed: int, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(speckle(seed)).convert(mode).save(path)
    return path


def class_folders(root: Path, counts: dict[str, int], suffix: str = ".png", seed: int = 0) -> Path:
    """root/<class>/<class>_<i><suffix> with distinct random images."""
    for k, (name, count) in enumerate(counts.items()):
        for i in range(count):
            write_image(root / name / f"{name}_{i}{suffix}", seed + 1000 * k + i)
    return root
