"""What the report reads: the metrics JSON and out-of-fold predictions the `finetune` and `svm` stages wrote,
gathered into one `StudyResults` (a row per configuration and classifier, the scores side by side per dataset).

Repeated cross-validation (`cv.repeats` R > 1: oof.csv has a `repeat` column, the metrics' `folds` entries a
`repeat`): `predictions` holds repeat 0 (the single split's scores: what the report did before repeats existed),
`by_repeat` every repeat (one row per image and repeat, with a `repeat` column), and `results` counts
`n_folds` per repeat and `n_repeats`. With R = 1, `by_repeat` is `predictions` with `repeat` = 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from itertools import product

import pandas as pd

from sonotune.config import Params
from sonotune.errors import DataError
from sonotune.layout import metrics_file, stage_dir
from sonotune.vocabulary import CLASSIFIERS


@dataclass(frozen=True)
class StudyResults:
    """Everything the stages wrote: one row per configuration and classifier, and per dataset the
    out-of-fold scores of every configuration side by side (one row per image)."""

    results: pd.DataFrame
    predictions: dict[str, pd.DataFrame]  # repeat 0: one row per image
    chosen_c: dict[tuple[str, str, int], list[float]]
    by_repeat: dict[str, pd.DataFrame] = field(default_factory=dict)  # one row per (repeat, image), `repeat` column


def score_column(backbone: str, strategy: int, classifier: str) -> str:
    return f"{backbone}/{strategy}/{classifier}"


def single_class_folds(folds: list[dict]) -> int:
    """Folds in which the classifier called every image one class (no positive or no negative call), from the
    per-fold counts the stages write; such a fold's accuracy is just its prevalence."""
    return sum(1 for fold in folds if {"tp", "fp", "tn", "fn"} <= fold.keys()
               and (fold["tp"] + fold["fp"] == 0 or fold["tn"] + fold["fn"] == 0))


def _read_json(path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: not found; run the finetune and svm stages first (dvc repro)")
    return json.loads(path.read_text())


def _read_oof(dataset: str, backbone: str, strategy: int, classifier: str) -> pd.DataFrame:
    path = stage_dir(dataset, backbone, strategy, classifier) / "oof.csv"
    if not path.is_file():
        raise DataError(f"{path}: not found; run the finetune and svm stages first (dvc repro)")
    oof = pd.read_csv(path, dtype={"group": str})
    missing = {"path", "group", "y", "fold", "score"} - set(oof.columns)
    if missing:
        raise DataError(f"{path}: missing columns {sorted(missing)}")
    return oof if "repeat" in oof.columns else oof.assign(repeat=0)


def _fold_counts(metrics: dict) -> dict[str, int]:
    """Folds per repeat and repeats, from the metrics JSON's `folds` entries (no `repeat`: a single split)."""
    repeats = [entry.get("repeat", 0) for entry in metrics["folds"]]
    return {"n_folds": repeats.count(0), "n_repeats": len(set(repeats))}


def load_study(params: Params) -> StudyResults:
    """Read the metrics and out-of-fold predictions of every configuration the params name."""
    rows, predictions, chosen_c, by_repeat = [], {}, {}, {}
    study = params.study
    for dataset in study.datasets:
        wide = None
        for backbone, strategy, classifier in product(study.backbones, study.strategies, CLASSIFIERS):
            metrics = _read_json(metrics_file(dataset, backbone, strategy, classifier))
            rows.append({"dataset": dataset, "backbone": backbone, "strategy": strategy, "classifier": classifier,
                         "single_class_folds": single_class_folds(metrics["folds"]),
                         **_fold_counts(metrics), **metrics["mean"]})
            if classifier == "svm":
                chosen_c[(dataset, backbone, strategy)] = metrics.get("chosen_c", [])
            oof = _read_oof(dataset, backbone, strategy, classifier).set_index(["repeat", "path"])
            scores = oof["score"].rename(score_column(backbone, strategy, classifier))
            if wide is None:
                wide = oof[["group", "y", "fold"]]
            elif not oof[["y", "fold"]].reindex(wide.index).equals(wide[["y", "fold"]]):
                raise DataError(f"{dataset}: the configurations' out-of-fold files disagree on images, folds or "
                                "repeats; rerun the study from one params.yaml (dvc repro)")
            wide = wide.join(scores, how="inner")
        by_repeat[dataset] = wide.reset_index()[["path", "repeat", *wide.columns]]
        first = by_repeat[dataset]
        predictions[dataset] = first[first["repeat"] == 0].drop(columns="repeat").reset_index(drop=True)
    return StudyResults(pd.DataFrame(rows), predictions, chosen_c, by_repeat)
