"""The verdicts in the summary, on synthetic stage outputs with a clear winner."""

from __future__ import annotations

from sonotune.stages.report import run_report
from tests.stages.report.helpers import fake_study, report_params


def test_summary_names_the_best_strategy_and_a_clear_winner(workdir):
    params = report_params(backbones=("vgg16",), strategies=(0, 15, 50))
    quality = {("vgg16", 0, "mlp"): 0.0, ("vgg16", 15, "mlp"): 0.2, ("vgg16", 50, "mlp"): 4.0,
               ("vgg16", 0, "svm"): 0.0, ("vgg16", 15, "svm"): 0.1, ("vgg16", 50, "svm"): 0.3}
    fake_study(params, quality)
    text = run_report(params)
    line = next(l for l in text.splitlines() if l.startswith("- phantom / vgg16:"))
    assert "50 % with MLP" in line and "runner-up 15 %" in line and "→ distinguishable" in line
    line = next(l for l in text.splitlines() if l.startswith("- phantom: SVM ahead in"))
    assert "of 3 configurations" in line and "(vgg16 50 %: MLP +0.4" in line
