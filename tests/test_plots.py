"""plots.py: ROC points for DVC plots and the PNG figures logged with the runs."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sonotune.plots import roc_points, save_confusion_png, save_roc_png


def _scores(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    return y, y * 0.6 + rng.normal(scale=0.5, size=n)


def test_roc_points_run_from_the_origin_to_the_corner_without_going_back():
    y, score = _scores()
    points = roc_points(y, score)
    assert list(points.columns) == ["fpr", "tpr"]
    assert (points.iloc[0].tolist(), points.iloc[-1].tolist()) == ([0.0, 0.0], [1.0, 1.0])
    assert (np.diff(points["fpr"]) >= 0).all() and (np.diff(points["tpr"]) >= 0).all()


def test_a_perfect_score_reaches_the_top_left_corner():
    y = np.array([0, 0, 1, 1])
    points = roc_points(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert ((points["fpr"] == 0) & (points["tpr"] == 1)).any()


def test_figures_are_real_pngs(tmp_path):
    y, score = _scores()
    save_roc_png(tmp_path / "roc.png", {"MLP": (y, score), "SVM": (y, -score)}, "fold 0")
    save_confusion_png(tmp_path / "cm.png", y, (score >= 0.3).astype(int), "fold 0")
    for name in ("roc.png", "cm.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and min(image.size) >= 200
            assert np.asarray(image.convert("L")).std() > 10  # something is drawn, not a blank canvas
