"""Synthetic B-mode ultrasound phantom: the built-in dataset that lets the demo run with zero downloads.

Each image is simulated, not drawn: a tissue echogenicity map (skin and fat layers, a hypoechoic lesion)
scatters a complex Gaussian field (fully developed speckle, Rayleigh amplitude), a Gaussian point-spread
function blurs it (lateral wider than axial), the signal attenuates with depth and an imperfect
time-gain compensation partly restores it, and a log compression maps it to 8 bits.

Benign lesions are oval, circumscribed, wider-than-tall, homogeneous, with posterior acoustic enhancement.
Malignant lesions are irregular (angular or spiculated margin), taller-than-wide, heterogeneous, with
posterior shadowing and optional microcalcifications. Every class cue is drawn from overlapping
distributions, so the task is learnable but not trivial.

Run as `sonotune phantom OUT_DIR [--n-benign N --n-malignant M --size PX --seed S]`; it writes the
`<root>/<class>/*.png` layout that real datasets use. Deterministic by seed: image i of a class depends only on
(seed, class, i), and so are the files' bytes: PNGs are written uncompressed (zlib level 0, stored blocks), where
Pillow's bundled deflate and the system zlib write the same bytes (at level 6 they differ: measured with Pillow
13). That is what lets the top-level `data.dvc` record one hash for the demo's set on every machine.

`sonotune phantom --dataset NAME` writes a dataset entry's set where its `root` says (`data/phantom`, versioned
by data.dvc), with a `phantom.json` stamp of what it was generated from; the prepare stage then reads that folder
like any folder dataset and refuses one whose stamp disagrees with params.yaml (`phantom_folder_records`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from sonotune.data.records import Record, class_folder_records
from sonotune.errors import DataError
from sonotune.layout import staged_dir
from sonotune.vocabulary import CLASS_NAMES as CLASSES

STAMP = "phantom.json"  # in a written dataset folder: the generator's inputs (phantom_spec), beside the class folders


@dataclass(frozen=True)
class LesionShape:
    """Geometry of one lesion in pixel units of the output image."""

    center_row: float
    center_col: float
    half_width: float
    half_height: float
    margin_irregularity: float  # amplitude of low-frequency radius wobble, fraction of radius
    spicules: int  # number of sharp radial spikes
    spicule_length: float  # fraction of radius


def _sample_lesion(rng: np.random.Generator, size: int, malignant: bool) -> LesionShape:
    """Draw a lesion; the class shifts the distributions of aspect ratio and margin, which overlap."""
    radius = size * rng.uniform(0.09, 0.2)
    # width/height: benign mostly > 1 (wider-than-tall), malignant mostly < 1 (taller-than-wide)
    log_aspect = rng.normal(-0.1 if malignant else 0.15, 0.3)
    aspect = float(np.exp(log_aspect))
    half_width = radius * np.sqrt(aspect)
    half_height = radius / np.sqrt(aspect)
    irregularity = rng.uniform(0.04, 0.25) if malignant else rng.uniform(0.0, 0.15)
    spicules = int(rng.integers(1, 7)) if malignant and rng.random() < 0.4 else 0
    spicule_length = rng.uniform(0.2, 0.55) if spicules else 0.0
    margin = 0.18 * size
    return LesionShape(
        center_row=rng.uniform(0.3 * size, 0.65 * size),
        center_col=rng.uniform(margin + half_width * 0.5, size - margin - half_width * 0.5),
        half_width=half_width,
        half_height=half_height,
        margin_irregularity=irregularity,
        spicules=spicules,
        spicule_length=spicule_length,
    )


def _lesion_mask(shape: LesionShape, size: int, rng: np.random.Generator) -> np.ndarray:
    """Soft (0..1) lesion mask from a polar radius function r(theta) around the lesion centre."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    dy = (rows - shape.center_row) / shape.half_height
    dx = (cols - shape.center_col) / shape.half_width
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    radius = np.ones_like(theta)
    for harmonic in range(2, 7):
        amp = shape.margin_irregularity * rng.uniform(0.3, 1.0) / harmonic**0.5
        radius += amp * np.cos(harmonic * theta + rng.uniform(0, 2 * np.pi))
    for angle in rng.uniform(-np.pi, np.pi, size=shape.spicules):
        width = rng.uniform(0.05, 0.15)
        delta = np.angle(np.exp(1j * (theta - angle)))
        radius += shape.spicule_length * np.clip(1 - np.abs(delta) / width, 0, None)
    edge = 0.04 if shape.margin_irregularity < 0.12 and shape.spicules == 0 else 0.015
    return 1.0 / (1.0 + np.exp(np.clip((rho - radius) / edge, -50, 50)))


def _tissue_map(rng: np.random.Generator, size: int) -> np.ndarray:
    """Background echogenicity: a bright skin line, a darker fat layer, glandular tissue below, texture."""
    depth = np.linspace(0, 1, size)[:, None]
    skin = rng.uniform(0.03, 0.07)
    fat = skin + rng.uniform(0.08, 0.18)
    tilt = rng.uniform(-0.04, 0.04) * np.linspace(-1, 1, size)[None, :]
    echo = np.where(depth < skin + tilt, 2.5, np.where(depth < fat + tilt, 0.55, 1.0))
    texture = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), sigma=size / 24)
    texture /= texture.std() + 1e-9
    return echo * np.exp(0.25 * texture)


def _posterior_column(shape: LesionShape, size: int) -> np.ndarray:
    """Weight (0..1) of the acoustic column behind the lesion, fading with distance below it."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    lateral = np.exp(-(((cols - shape.center_col) / (0.85 * shape.half_width)) ** 4))
    below = np.clip((rows - shape.center_row) / (shape.half_height + 1e-9), 0, None)
    onset = np.clip(below, 0, 1)
    fade = np.exp(-np.clip(rows - shape.center_row - shape.half_height, 0, None) / (0.6 * size))
    return lateral * onset * fade


def simulate_bmode(rng: np.random.Generator, size: int, malignant: bool) -> np.ndarray:
    """One synthetic B-mode image (uint8, size × size) with a benign- or malignant-looking lesion."""
    echo = _tissue_map(rng, size)
    shape = _sample_lesion(rng, size, malignant)
    mask = _lesion_mask(shape, size, rng)

    interior = rng.uniform(0.03, 0.2)
    blotches = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), sigma=max(size / 40, 1))
    blotches /= blotches.std() + 1e-9
    heterogeneity = rng.uniform(0.15, 0.6) if malignant else rng.uniform(0.0, 0.3)
    interior = interior * np.exp(heterogeneity * blotches)
    echo = echo * (1 - mask) + interior * mask

    posterior_gain = rng.normal(0.75, 0.3) if malignant else rng.normal(1.35, 0.35)
    echo = echo * (1 + (max(posterior_gain, 0.08) - 1) * _posterior_column(shape, size) * (1 - mask))

    if malignant and rng.random() < 0.3:
        inside = np.argwhere(mask > 0.8)
        if len(inside):
            for r, c in inside[rng.integers(0, len(inside), size=rng.integers(2, 8))]:
                echo[r, c] += rng.uniform(15, 40)

    scatter = rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))
    field = scatter * np.sqrt(echo)
    axial, lateral = size / 256 * rng.uniform(0.8, 1.3), size / 256 * rng.uniform(1.6, 2.6)
    rf = ndimage.gaussian_filter(field.real, (axial, lateral)) + 1j * ndimage.gaussian_filter(
        field.imag, (axial, lateral)
    )
    envelope = np.abs(rf)

    depth = np.linspace(0, 1, size)[:, None]
    attenuation = np.exp(-rng.uniform(1.5, 3.0) * depth)
    tgc = np.exp(rng.uniform(0.6, 1.0) * -np.log(attenuation))  # compensates 60–100 % of the loss
    envelope = envelope * attenuation * tgc * np.exp(rng.normal(0, 0.15))

    dynamic_range_db = rng.uniform(30, 42)
    db = 20 * np.log10(envelope / (np.percentile(envelope, 99.5) + 1e-12) + 1e-12)
    display_gain_db = rng.uniform(4, 10)  # the operator's overall gain: how dark the screen looks
    image = np.clip((db + dynamic_range_db - display_gain_db) / dynamic_range_db, 0, 1) * 255
    return image.astype(np.uint8)


def _image_rng(seed: int, class_name: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, CLASSES.index(class_name), index])


def write_phantom(out_dir: Path, n_benign: int, n_malignant: int, size: int, seed: int) -> list[Path]:
    """Write `out_dir/<class>/<class>_NNNN.png` and return the written paths (sorted)."""
    written = []
    for class_name, count in (("benign", n_benign), ("malignant", n_malignant)):
        class_dir = Path(out_dir) / class_name
        class_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            pixels = simulate_bmode(_image_rng(seed, class_name, index), size, class_name == "malignant")
            path = class_dir / f"{class_name}_{index:04d}.png"
            Image.fromarray(pixels, mode="L").save(path, compress_level=0)
            written.append(path)
    return sorted(written)


def phantom_spec(source, seed: int) -> dict:
    """What a phantom dataset entry's images are a function of (its stamp)."""
    return {"seed": seed, "n_benign": source.n_benign, "n_malignant": source.n_malignant,
            "image_size": source.image_size}


def regenerate_hint(name: str) -> str:
    return (f"`sonotune phantom --dataset {name}` regenerates it (then `dvc commit data.dvc`), "
            f"or `dvc pull data.dvc` fetches the team's copy")


def configured_phantom(datasets: dict, name: str):
    """The entry `name` of params' `datasets`, checked to be a phantom set with a `root` to write to."""
    source = datasets.get(name)
    if source is None or source.kind != "phantom" or not source.root:
        phantoms = sorted(key for key, entry in datasets.items() if entry.kind == "phantom" and entry.root)
        raise DataError(f"datasets.{name}: not a phantom entry with a `root` folder "
                        f"(those with one: {', '.join(phantoms) or 'none'})")
    return source


def write_phantom_dataset(root: Path, source, seed: int) -> list[Path]:
    """The dataset entry's images and stamp written to `root`, which is replaced whole (nothing half-written)."""
    with staged_dir(Path(root)) as staging:
        paths = write_phantom(staging, source.n_benign, source.n_malignant, source.image_size, seed)
        (staging / STAMP).write_text(json.dumps(phantom_spec(source, seed), indent=2) + "\n")
    return [Path(root) / path.relative_to(staging) for path in paths]


def phantom_folder_records(source, seed: int, name: str = "phantom") -> list[Record]:
    """The records of a phantom set written to `source.root`: its class folders, read as any folder dataset is,
    once its stamp shows it is the set params.yaml describes (seed, counts, size)."""
    root = Path(source.root)
    stamp = root / STAMP
    if not stamp.is_file():
        raise DataError(f"{root}: holds no phantom set ({STAMP} not found); {regenerate_hint(name)}")
    try:
        written = json.loads(stamp.read_text())
    except ValueError:
        raise DataError(f"{stamp}: not valid JSON; {regenerate_hint(name)}") from None
    wanted = phantom_spec(source, seed)
    if written != wanted:
        differ = ", ".join(f"{key} {written.get(key)} (params: {value})" for key, value in wanted.items()
                           if written.get(key) != value)
        raise DataError(f"{root}: generated with other settings than params.yaml's seed and datasets.{name}: "
                        f"{differ}; {regenerate_hint(name)}")
    return [record for class_name in CLASSES for record in
            class_folder_records(root / class_name, class_name, f"{class_name}/")]


def sample_grid(path: Path, per_class: int = 4, size: int = 160, seed: int = 0) -> None:
    """Save a labelled grid of phantom images (top row benign, bottom malignant) for the README."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, per_class, figsize=(2.2 * per_class, 4.6))
    for row, class_name in enumerate(CLASSES):
        for col in range(per_class):
            pixels = simulate_bmode(_image_rng(seed, class_name, col), size, class_name == "malignant")
            axes[row, col].imshow(pixels, cmap="gray", vmin=0, vmax=255)
            axes[row, col].set_axis_off()
            axes[row, col].set_title(class_name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# The source task of `sonotune pretrain` (models/pretraining.py): fresh phantom cases drawn from their own random
# stream. A study image is drawn from default_rng([seed, class, index]) (three words); a source image from
# default_rng([SOURCE_STREAM, seed, index]) (four words, the first a constant no study seed collides with in
# practice), so no source image repeats a study image: the two sets are independent draws of the simulator.
SOURCE_STREAM = 0x50524554  # "PRET"


def source_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of source image `index` (never one of the study's streams, see SOURCE_STREAM)."""
    return np.random.default_rng([SOURCE_STREAM, seed, index])


def source_label(index: int) -> int:
    """Source images alternate benign (even index, 0) and malignant (odd, 1): a balanced source task."""
    return index % 2


def simulate_source(n_images: int, size: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`n_images` source phantom images (uint8, size × size) and their labels (0 benign, 1 malignant)."""
    labels = np.array([source_label(index) for index in range(n_images)], dtype=np.int64)
    images = [simulate_bmode(source_rng(seed, index), size, bool(label)) for index, label in enumerate(labels)]
    return images, labels
