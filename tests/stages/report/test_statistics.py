"""The report's statistics: the printed AUC is the out-of-fold one, and where folds hold too few groups of a
class for a calibrated test the report says so instead of printing a p-value or an interval."""

from __future__ import annotations

import numpy as np
import pandas as pd

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
    assert "clustered DeLong p " in text
    assert "clustered (Obuchowski) variance, logit scale, t reference" in text
