"""Reading the stages' outputs: a missing file is one clear error."""

from __future__ import annotations

import pytest

from sonotune.stages.report import run_report
from tests.stages.report.helpers import report_params


def test_missing_stage_output_is_one_clear_error(workdir):
    from sonotune.errors import DataError

    with pytest.raises(DataError, match=r"runs/phantom/vgg16/0/mlp_metrics.json: not found"):
        run_report(report_params())
