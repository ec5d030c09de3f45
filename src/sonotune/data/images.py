"""Decoded image cache: every image decoded once, converted to 3-channel uint8 and resized to a square side.

Greyscale, palette, RGBA and 16-bit images all become RGB uint8. Resize policy: `stretch` (ignore the aspect
ratio, as Keras' loaders do) or `pad` (letterbox to square with black, then resize).

Decode limit: an image of more than `MAX_PIXELS` pixels is refused when its header is read, before any pixel is
decoded (a 190 KB PNG can declare 13000×13000 px, 0.5 GB once decoded), so `prepare` excludes it with its size as
the reason and `predict` skips it. Pillow's own DecompressionBombWarning (raw, with its install path) is silenced:
the limit is this one.
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

from sonotune.errors import DataError

MAX_PIXELS = 50_000_000  # 7071 px square; ultrasound frames are under 1 Mpx, the largest scans ~20 Mpx
MIN_SIDE = 8  # px: an image with a shorter side is no scan (a 1×1 tracking pixel, an icon, a broken export)
# Pillow warns above MAX_IMAGE_PIXELS and raises DecompressionBombError above twice that: raise at MAX_PIXELS
Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def to_rgb_uint8(image: Image.Image) -> Image.Image:
    if image.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode in {"RGBA", "LA", "P", "PA"}:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def load_square(path: Path, size: int, resize: str = "stretch") -> np.ndarray:
    """Decode `path` to an RGB uint8 array of shape (size, size, 3)."""
    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb_uint8(image)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    return square(rgb, size, resize)


def square(rgb: Image.Image, size: int, resize: str = "stretch") -> np.ndarray:
    """An RGB image as a (size, size, 3) uint8 array under the resize policy (the cache's and the deployed
    model's one resize step)."""
    if resize == "pad":
        rgb = ImageOps.pad(rgb, (size, size), method=Image.Resampling.BILINEAR, color=(0, 0, 0))
    else:
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def build_image_array(paths: list[Path], size: int, resize: str = "stretch") -> np.ndarray:
    """Stack every image of a manifest into one (n, size, size, 3) uint8 array, in manifest order."""
    array = np.empty((len(paths), size, size, 3), dtype=np.uint8)

    def fill(index: int) -> None:
        array[index] = load_square(Path(paths[index]), size, resize)

    # threads: PIL releases the GIL while decoding and resizing
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(tqdm(pool.map(fill, range(len(paths))), total=len(paths), desc=f"caching images at {size} px",
                  unit="img", leave=False, disable=None))
    return array
