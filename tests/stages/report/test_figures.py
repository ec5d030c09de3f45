"""The AUC heatmap (a fixed, stated colour scale, the cells not distinguishable from their row's best) and the
cross-strategy figure (a panel per backbone, a line and an interval band per classifier)."""

from __future__ import annotations

import pandas as pd

from sonotune.stages.report.figures import auc_by_strategy, auc_heatmap, indistinguishable_from_best


def _results(aucs: dict) -> pd.DataFrame:
    return pd.DataFrame([{"dataset": "d", "backbone": b, "strategy": s, "classifier": c, "auc_mean": v}
                         for (b, s, c), v in aucs.items()])


def _test(backbone, classifier, a, b, p_holm):
    return {"dataset": "d", "family": f"strategy:{backbone}:{classifier}", "a": str(a), "b": str(b), "p_holm": p_holm}


AUCS = {("vgg16", 0, "mlp"): 0.45, ("vgg16", 15, "mlp"): 0.52, ("vgg16", 50, "mlp"): 0.55,
        ("vgg16", 0, "svm"): 0.60, ("vgg16", 15, "svm"): 0.90, ("vgg16", 50, "svm"): 0.70}
TESTS = pd.DataFrame([_test("vgg16", "mlp", 0, 15, 0.01), _test("vgg16", "mlp", 0, 50, 0.01),
                      _test("vgg16", "mlp", 15, 50, 0.60), _test("vgg16", "svm", 0, 15, 0.001),
                      _test("vgg16", "svm", 0, 50, 0.30), _test("vgg16", "svm", 15, 50, float("nan"))])


def test_cells_not_distinguishable_from_the_best_of_their_row():
    marks = indistinguishable_from_best(_results(AUCS), TESTS, "d", alpha=0.05)
    assert marks[("vgg16", "mlp")] == (50, {15})
    assert marks[("vgg16", "svm")] == (15, {50})  # a missing p-value (too few groups) is no evidence of a gap


def test_heatmap_scale_is_fixed_and_says_what_it_clips():
    fig = auc_heatmap(_results(AUCS), "d", TESTS, 0.05, "cluster permutation test")
    panel, colorbar = fig.axes[0], fig.axes[-1]
    assert panel.images[0].get_clim() == (0.5, 1.0)
    assert panel.images[0].get_array().min() == 0.5  # 0.45 clipped
    assert "values below 0.5 shown as 0.5" in colorbar.get_ylabel()
    assert [t.get_text() for t in panel.texts] == ["0.450", "0.520", "0.550"]
    assert [p.get_linestyle() for p in panel.patches] == ["--"]  # the 15 % cell of the MLP row
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_cross_strategy_figure_has_a_panel_per_backbone_and_a_band_per_classifier():
    import matplotlib.pyplot as plt

    results = _results(AUCS | {("resnet50", s, c): 0.6 for s in (0, 15, 50) for c in ("mlp", "svm")})
    results = results.assign(auc_low=results["auc_mean"] - 0.1, auc_high=results["auc_mean"] + 0.1)
    fig = auc_by_strategy(results, "d", 0.05, "clustered")
    vgg, resnet = fig.axes
    assert (vgg.get_title(), resnet.get_title()) == ("vgg16", "resnet50")
    mlp, svm = vgg.lines[:2]
    assert list(mlp.get_xdata()) == [0, 15, 50] and list(svm.get_ydata()) == [0.60, 0.90, 0.70]
    bands = [c for c in vgg.collections if c.__class__.__name__ == "FillBetweenPolyCollection"
             or c.__class__.__name__ == "PolyCollection"]
    assert len(bands) == 2
    low, high = bands[1].get_paths()[0].vertices[:, 1].min(), bands[1].get_paths()[0].vertices[:, 1].max()
    assert (round(low, 6), round(high, 6)) == (0.5, 1.0)  # the SVM band: 0.60 − 0.1 … 0.90 + 0.1
    assert "best: 15 %, SVM 0.900" in [t.get_text() for t in vgg.get_legend().get_texts()]
    assert "95 % intervals (clustered)" in fig._suptitle.get_text()
    plt.close(fig)
