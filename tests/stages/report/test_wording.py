"""The phrase builders of `wording`: each verdict in its own word with the numbers that decided it, and no
sentence claiming more than its statistic."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd

from sonotune.stages.report import wording
from sonotune.stages.report.statistics import verdicts

MARGIN = 0.05


def _rows(p_value, difference, se) -> pd.DataFrame:
    """Comparison rows as `statistics.comparisons` writes them, decided by `verdicts`."""
    difference, se = np.asarray(difference, float), np.asarray(se, float)
    half = 2.0 * se
    frame = pd.DataFrame({"dataset": "d", "family": "strategy:vgg16:svm", "backbone": "vgg16", "classifier": "svm",
                          "strategy": pd.array([pd.NA] * len(se), dtype="Int64"), "a": "15", "b": "0",
                          "auc_a": 0.7 + difference, "auc_b": 0.7, "difference": difference,
                          "low": difference - half, "high": difference + half, "se": se, "df": 60.0,
                          "p_value": p_value, "no_test": None})
    return frame.assign(**verdicts(frame["p_value"].to_numpy(float), difference, se, frame["df"].to_numpy(float),
                                   0.05, MARGIN))


def test_each_verdict_in_its_word_with_the_numbers_that_decided_it():
    rows = _rows([1e-5, 0.9, 0.4], [0.2, 0.0, 0.06], [0.03, 0.005, 0.08])
    different, equivalent, inconclusive = (wording.verdict_phrase(t, MARGIN) for t in rows.itertuples())
    assert different.startswith("different (ΔAUC +0.200 [+0.140, +0.260], Holm p < 0.001"), different
    assert equivalent.startswith("equivalent within ±0.05 (ΔAUC +0.000 [-0.010, +0.010], equivalence Holm p"), \
        equivalent
    assert inconclusive == "inconclusive (ΔAUC +0.060 [-0.100, +0.220])", inconclusive
    flipped = wording.verdict_phrase(next(rows.itertuples()), MARGIN, sign=-1)
    assert flipped.startswith("different (ΔAUC -0.200 [-0.260, -0.140]"), flipped


def test_a_difference_inside_the_margin_is_different_and_said_to_be_small():
    row = next(_rows([1e-6], [0.02], [0.003]).itertuples())
    assert row.verdict == "different" and row.within_margin
    assert "smaller than ±0.05, equivalence Holm p" in wording.verdict_phrase(row, MARGIN)


def test_no_calibrated_test_is_inconclusive_with_its_reason():
    row = SimpleNamespace(no_test="fold 1 holds 1 malignant group", verdict="inconclusive")
    assert wording.verdict_phrase(row, MARGIN) == "inconclusive (no calibrated test: fold 1 holds 1 malignant group)"


def test_counts_name_the_three_answers_and_the_correction():
    rows = _rows([1e-5, 0.9, 0.4], [0.2, 0.0, 0.06], [0.03, 0.005, 0.08])
    assert wording.count_phrase(rows, MARGIN) == ("1 different, 1 equivalent within ±0.05, 1 inconclusive, "
                                                   "of 3 comparisons")
    assert wording.correction_phrase(3) == "Holm over all 3 comparisons of this report"


def test_the_headline_claims_no_more_than_its_test():
    """No 'luck of which patients were drawn' (a p-value is not that, and the phantom has no patients), and a
    study without a difference says an inconclusive answer is not evidence of none."""
    rows = _rows([1e-5, 0.9, 0.4], [0.2, 0.0, 0.06], [0.03, 0.005, 0.08])
    found = wording.headline_lines(rows, 0.05, MARGIN)[0]
    assert "training the last 15 % of the layers scores AUC 0.900 against 0.700 at 0 %" in found, found
    none = wording.headline_lines(_rows([0.4], [0.06], [0.08]), 0.05, MARGIN)[0]
    assert "none of the 1 comparisons is different" in none and "not evidence of no difference" in none, none
    for sentence in (found, none):
        assert "luck" not in sentence and "patients" not in sentence and "distinguishable" not in sentence


def test_the_highest_auc_is_called_a_point_estimate():
    top = SimpleNamespace(dataset="d", backbone="vgg16", strategy=15, classifier="svm", auc_mean=0.8, auc_low=0.7,
                          auc_high=0.9, recall_mean=0.7, specificity_mean=0.8, balanced_accuracy_mean=0.75,
                          mcc_mean=0.5)
    assert "the highest AUC, a point estimate" in wording.highest_auc_line(top)
