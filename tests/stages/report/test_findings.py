"""The verdicts in the summary, on synthetic stage outputs with a clear winner: the answer first, in the three
words, with the study-wide correction named."""

from __future__ import annotations

import pandas as pd

from sonotune.stages.report import run_report
from sonotune.stages.report.wording import headline_lines
from tests.stages.report.helpers import fake_study, report_params


def test_summary_names_the_best_strategy_and_a_clear_winner(workdir):
    params = report_params(backbones=("vgg16",), strategies=(0, 15, 50))
    quality = {("vgg16", 0, "mlp"): 0.0, ("vgg16", 15, "mlp"): 0.2, ("vgg16", 50, "mlp"): 4.0,
               ("vgg16", 0, "svm"): 0.0, ("vgg16", 15, "svm"): 0.1, ("vgg16", 50, "svm"): 0.3}
    fake_study(params, quality)
    text = run_report(params)
    line = next(l for l in text.splitlines() if l.startswith("- phantom / vgg16 — which strategy:"))
    assert "50 % with the MLP" in line and "15 % different" in line, line
    line = next(l for l in text.splitlines() if l.startswith("- phantom, MLP vs SVM:"))
    assert line.startswith("- phantom, MLP vs SVM: 1 of 3 different") and "(vgg16 50 %: MLP +0.4" in line, line
    assert "Holm over all 9 comparisons of this report" in text


def test_one_sentence_names_the_clearest_difference(workdir):
    params = report_params(backbones=("vgg16",), strategies=(0, 15))
    quality = {("vgg16", 0, "mlp"): 0.0, ("vgg16", 15, "mlp"): 0.1, ("vgg16", 0, "svm"): 4.0, ("vgg16", 15, "svm"): 0.2}
    fake_study(params, quality)
    line = next(l for l in run_report(params).splitlines() if l.startswith("In one sentence:"))
    assert "vgg16 at 0 %, the SVM scores AUC" in line and "against the MLP head's" in line, line
    margin, low, high = (float(v) for v in
                         line.split("a margin of ")[1].replace("[", "").replace(",", "").split("]")[0].split())
    assert 0 < low < margin < high, line


def test_one_sentence_says_when_nothing_is_distinguishable(workdir):
    params = report_params(backbones=("vgg16",), strategies=(0, 15))
    fake_study(params, {key: 0.3 for key in [("vgg16", s, c) for s in (0, 15) for c in ("mlp", "svm")]})
    line = next(l for l in run_report(params).splitlines() if l.startswith("In one sentence:"))
    assert "none of the 4 comparisons is different" in line and "0 different" in line, line


def test_backbones_are_compared_on_the_same_classifier_and_strategy(workdir):
    params = report_params(backbones=("vgg16", "resnet50"), strategies=(0, 15))
    quality = {(b, s, c): 0.3 for b in ("vgg16", "resnet50") for s in (0, 15) for c in ("mlp", "svm")}
    quality[("resnet50", 15, "svm")] = 4.0
    fake_study(params, quality)
    text = run_report(params)
    tests = pd.read_csv(workdir / "reports/comparisons.csv")
    backbones = tests[tests["family"].str.startswith("backbone:")]
    assert sorted(backbones["family"]) == ["backbone:mlp:0", "backbone:mlp:15", "backbone:svm:0", "backbone:svm:15"]
    assert (backbones[["a", "b"]].to_numpy() == ["vgg16", "resnet50"]).all()
    line = next(l for l in text.splitlines() if l.startswith("- phantom, backbones:"))
    assert "1 of 4 different" in line and "SVM 15 %: resnet50 +0." in line and "over vgg16" in line, line
    sentence = headline_lines(backbones, 0.05, 0.05)[0]
    assert "on phantom with the SVM at 15 %, resnet50 scores AUC" in sentence and "against vgg16's" in sentence, sentence


def test_the_summary_says_what_the_backbones_start_from(workdir):
    from sonotune.stages.report.wording import starting_weights_line

    params = report_params(backbones=("vgg16",), strategies=(0, 15))
    fake_study(params)
    assert starting_weights_line(params) in run_report(params)
    lines = {weights: starting_weights_line(params.model_copy(update={
                 "finetune": params.finetune.model_copy(update={"weights": weights})}))
             for weights in (None, "imagenet", "prepared/pretrain/{backbone}.weights.h5", "w/{backbone}.weights.h5")}
    assert "nothing is transferred" in lines[None] and "ImageNet" in lines["imagenet"]
    assert f"the pretrain stage trained on a source task (phantom: {params.pretrain.n_images} fresh cases" in lines[
        "prepared/pretrain/{backbone}.weights.h5"]
    assert "`w/{backbone}.weights.h5`" in lines["w/{backbone}.weights.h5"]


def test_the_summary_opens_with_the_answer_to_the_papers_two_questions(workdir):
    """Per backbone: the highest-AUC strategy, each other strategy's verdict against it, and MLP or SVM — in the
    three words, the numbers beside, before anything else."""
    params = report_params(backbones=("vgg16",), strategies=(0, 15, 50))
    quality = {("vgg16", 0, "mlp"): 0.0, ("vgg16", 15, "mlp"): 0.2, ("vgg16", 50, "mlp"): 4.0,
               ("vgg16", 0, "svm"): 0.0, ("vgg16", 15, "svm"): 0.1, ("vgg16", 50, "svm"): 0.3}
    fake_study(params, quality)
    lines = run_report(params).splitlines()
    assert lines[2].startswith("## The answer (Holm over all 9 comparisons of this report, α = 0.05")
    which, svm = lines[4].split(" MLP or SVM: ")
    assert which.startswith("- phantom / vgg16 — which strategy: the highest AUC is 50 % with the MLP"), which
    assert "0 % different (ΔAUC -0." in which and "15 % different (ΔAUC -0." in which, which
    assert svm.startswith("at 50 % the SVM (AUC 0.") and "is different (ΔAUC -0." in svm, svm
    assert "over its 3 strategies: " in svm and "(SVM ahead in 0)" in svm, svm
    assert 4 < next(i for i, l in enumerate(lines) if l.startswith("In one sentence:"))
