"""The report's statistics: the printed AUC is the out-of-fold one, and where folds hold too few groups of a
class for a calibrated test the report says so instead of printing a p-value or an interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sonotune.stages.report import run_report
from tests.stages.report import helpers
from tests.stages.report.helpers import fake_study, report_params


def test_too_few_groups_gives_reasons_not_p_values(workdir, monkeypatch):
    monkeypatch.setattr(helpers, "N_IMAGES", 20)  # 10 groups: fold 1 holds a single malignant group
    params = report_params(backbones=("vgg16",), strategies=(0, 15))
    fake_study(params)
    text = run_report(params)
    tests = pd.read_csv(workdir / "reports/comparisons.csv")
    assert tests["p_value"].isna().all() and not tests["distinguishable"].any()
    assert tests["no_test"].str.startswith("fold 1 holds 2 benign and 1 malignant groups").all()
    assert "no calibrated test, fold 1 holds 2 benign and 1 malignant groups" in text
    assert " p " not in text  # no p-value printed anywhere
    table = pd.read_csv(workdir / "reports/table3.csv")
    assert table["mlp_auc_low"].isna().all() and np.isfinite(table["mlp_auc"]).all()
    md = (workdir / "reports/table3.md").read_text()
    assert "[n/a]" in md and "phantom: no interval (fold 1 holds" in md


def test_default_test_and_interval_are_named_in_the_summary(workdir):
    params = report_params(backbones=("vgg16",), strategies=(0, 15))
    fake_study(params)
    text = run_report(params)
    assert "Every comparison by kind (clustered DeLong; Holm over all 4 comparisons of this report)" in text
    assert "clustered (Obuchowski) variance, logit scale, t reference" in text


def test_one_repeat_says_training_variance_is_not_covered(workdir):
    params = report_params(backbones=("vgg16",), strategies=(0, 15))
    fake_study(params)
    text = run_report(params)
    assert "training variance (initialisation, dropout, shuffling, which images train) is NOT covered" in text


def test_repeated_cv_compares_with_the_corrected_resampled_t_test(workdir):
    """With cv.repeats 3 every comparison runs on the 3 × k per-(repeat, fold) AUC differences, with the
    Nadeau–Bengio correction; the summary says the comparisons cover training variance."""
    from sonotune import stats_repeated
    from sonotune.stages.report.load import load_study
    from sonotune.stages.report.statistics import fold_aucs

    params = report_params(backbones=("vgg16",), strategies=(0, 50))
    params = params.model_copy(update={"cv": params.cv.model_copy(update={"repeats": 3})})
    fake_study(params, quality={("vgg16", 0, "mlp"): 0.2, ("vgg16", 50, "mlp"): 3.0}, repeats=3)
    text = run_report(params)
    tests = pd.read_csv(workdir / "reports/comparisons.csv")
    assert set(tests["test"]) == {"corrected resampled t"}
    frame = load_study(params).by_repeat["phantom"]
    differences = np.array([fold_aucs(part, "vgg16/0/mlp") - fold_aucs(part, "vgg16/50/mlp")
                            for _, part in frame.groupby("repeat")])
    ratio = stats_repeated.kfold_test_train_ratio(3, params.cv.val_fraction)  # n_train: fitted images only
    assert ratio == pytest.approx(1 / (2 * (1 - params.cv.val_fraction)))
    expected = stats_repeated.corrected_resampled_ttest(differences, ratio)
    row = tests[(tests["family"] == "strategy:vgg16:mlp")].iloc[0]
    assert row["p_value"] == pytest.approx(expected.p_value, rel=1e-3)  # the CSV rounds
    assert row["difference"] == pytest.approx(expected.mean, abs=1e-4)
    assert differences.shape == (3, 3) and row["distinguishable"]  # a large, consistent difference
    assert "3-fold CV × 3 repeats" in text and "also cover training variance" in text
    # one statistic everywhere: Table 3 prints the mean over repeats, the same AUC the comparison quotes
    table = pd.read_csv(workdir / "reports/table3.csv")
    repeat_means = [fold_aucs(part, "vgg16/0/mlp").mean() for _, part in frame.groupby("repeat")]
    assert table.loc[table["strategy"] == 0, "mlp_auc"].iloc[0] == pytest.approx(np.mean(repeat_means), abs=1e-4)
    assert row["auc_a"] == pytest.approx(np.mean(repeat_means), abs=1e-4)
