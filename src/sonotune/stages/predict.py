"""`sonotune predict MODEL_URI IMAGES… [--out predictions.csv] [--gradcam DIR]`: a deployed model on new images.

MODEL_URI is anything MLflow resolves (`models:/sonotune-busi@champion`, `models:/NAME/3`, `runs:/<id>/model`,
a local folder) naming a model logged by `sonotune deploy`. IMAGES are files or folders (searched recursively
for image files). Each image is decoded once here (an unreadable one is skipped and reported, one line each on
stderr, after the run; the exit status is then 2), then scored in batches; the CSV has one row per scored image: path, probability (of malignant), predicted_label,
threshold (and decision for the SVM head; gradcam, the overlay's path, with --gradcam).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from sonotune import tracking
from sonotune.errors import DataError, require_writable
from sonotune.vocabulary import PREDICT_SUFFIXES

BATCH = 32


def collect_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders expanded (recursively, sorted) to their image files."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PREDICT_SUFFIXES)
            if not found:
                raise DataError(f"{path}: no image files in this folder (looked for {', '.join(PREDICT_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    return files


def load_pyfunc(uri: str):
    """The MLflow pyfunc at `uri`, checked to be a model logged by `sonotune deploy`; DataError (one line) when
    it cannot be loaded or is another kind of model."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from sonotune.serving import ImageModelPyfunc

    tracking.configure()
    try:
        pyfunc = mlflow.pyfunc.load_model(uri)
        python_model = pyfunc.unwrap_python_model()
    except (MlflowException, OSError, ValueError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{uri}: cannot load the model ({reason[:300]})") from None
    if not isinstance(python_model, ImageModelPyfunc):
        raise DataError(f"{uri}: not a model logged by `sonotune deploy` (it takes raw images)")
    return pyfunc


def load_image_model(uri: str):
    """The `serving.ImageModel` inside the MLflow model at `uri`."""
    return load_pyfunc(uri).unwrap_python_model().model


def _decode(paths: list[Path], skipped: list[tuple[Path, str]]) -> tuple[list[Path], list[np.ndarray]]:
    from sonotune.serving import read_image_file, to_rgb_image

    kept, images = [], []
    for path in paths:
        try:
            images.append(np.asarray(to_rgb_image(read_image_file(path))))
            kept.append(path)
        except DataError as exc:
            reason = str(exc)
            skipped.append((path, reason if reason.startswith(str(path)) else f"{path}: {reason}"))
    return kept, images


def _overlay_name(path: Path, used: set[str]) -> str:
    name, n = f"{path.stem}_gradcam.png", 1
    while name in used:
        n += 1
        name = f"{path.stem}_{n}_gradcam.png"
    used.add(name)
    return name


def predict_files(model, paths: list[Path], gradcam_dir: Path | None = None, alpha: float = 0.4,
                  batch: int = BATCH) -> tuple[pd.DataFrame, list[tuple[Path, str]]]:
    """Score `paths` with an ImageModel; return (one row per readable image, [(path, reason) skipped])."""
    from sonotune.gradcam import save_overlay

    frames, skipped, used = [], [], set()
    with tqdm(total=len(paths), desc="predicting", unit="img") as bar:
        for start in range(0, len(paths), batch):
            kept, images = _decode(paths[start:start + batch], skipped)
            if kept:
                frame = model.predict_images(images)
                frame.insert(0, "path", [str(p) for p in kept])
                if gradcam_dir is not None:
                    maps = model.gradcam(images)
                    frame["gradcam"] = [str(save_overlay(gradcam_dir / _overlay_name(p, used), image, heat, alpha))
                                        for p, image, heat in zip(kept, images, maps)]
                frames.append(frame)
            bar.update(len(paths[start:start + batch]))
    if not frames:
        return pd.DataFrame(columns=["path", "probability", "predicted_label", "threshold"]), skipped
    return pd.concat(frames, ignore_index=True), skipped


def write_csv_atomically(frame: pd.DataFrame, out: Path) -> None:
    """Write `frame` to `out` through a temporary file beside it: a full disk or quota leaves no partial CSV."""
    import os

    partial = out.with_name(f".{out.name}.partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(partial, index=False)
        os.replace(partial, out)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"{out}: cannot write the predictions ({exc.strerror or type(exc).__name__}); nothing "
                        "was written: free space or pass another --out") from None


def run_predict(uri: str, inputs: list[str], out: Path, gradcam_dir: Path | None, alpha: float):
    """Validate the inputs, load the model, write the CSV (only when at least one image was scored)."""
    paths = collect_images(inputs)  # bad paths and outputs fail before the (slow) model load
    require_writable(out.parent, "the predictions CSV", "nothing was predicted")
    if out.is_dir():
        raise DataError(f"--out {out}: is a folder; name a CSV file")
    if gradcam_dir is not None:
        require_writable(gradcam_dir, "Grad-CAM overlays", "nothing was predicted")
    model = load_image_model(uri)
    predictions, skipped = predict_files(model, paths, gradcam_dir, alpha)
    if predictions.empty:
        if len(skipped) == 1:
            raise DataError(skipped[0][1])
        raise DataError(f"none of the {len(paths)} inputs is a readable image (first: {skipped[0][1]}); "
                        "nothing written")
    write_csv_atomically(predictions, out)
    return predictions, skipped
