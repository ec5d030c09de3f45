"""The report's figures (the paper's Figs 3–8): AUC against strategy per backbone with interval bands (the paper's
question in one picture), the backbone × strategy AUC heatmap, the out-of-fold ROC of the MLP head vs the SVM and
their confusion matrices for the two best backbones; and the data of the two DVC plots: `auc_by_strategy.csv` (the
first figure as rows) and `roc.csv` (every configuration's pooled ROC, the best one named)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from sonotune.stages.report.load import score_column
from sonotune.vocabulary import CLASS_NAMES, CLASSIFIER_LABELS, CLASSIFIERS, THRESHOLDS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


AUC_SCALE = (0.5, 1.0)  # fixed, so that a spread of noise around 0.5 does not fill the colour range


def indistinguishable_from_best(results: pd.DataFrame, tests: pd.DataFrame, dataset: str,
                                alpha: float) -> dict[tuple[str, str], tuple[int, set[int]]]:
    """Per (backbone, classifier): its best strategy by fold-mean AUC and the other strategies whose paired test
    against it is not significant after Holm (a missing test — too few groups — counts as not significant)."""
    marks = {}
    data = results[results["dataset"] == dataset]
    for (backbone, classifier), group in data.groupby(["backbone", "classifier"], sort=False):
        best = int(group.loc[group["auc_mean"].idxmax(), "strategy"])
        family = tests[(tests["dataset"] == dataset) & (tests["family"] == f"strategy:{backbone}:{classifier}")]
        tied = set()
        for test in family.itertuples():
            pair = {int(test.a), int(test.b)}
            if best in pair and not (test.p_holm < alpha):
                tied |= pair - {best}
        marks[(backbone, classifier)] = (best, tied)
    return marks


def save_auc_heatmap(path, results: pd.DataFrame, dataset: str, tests: pd.DataFrame | None = None,
                     alpha: float = 0.05, test_name: str = "paired test") -> None:
    """`auc_heatmap` saved to `path`."""
    plt = _plt()
    fig = auc_heatmap(results, dataset, tests, alpha, test_name)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def auc_heatmap(results: pd.DataFrame, dataset: str, tests: pd.DataFrame | None = None, alpha: float = 0.05,
                test_name: str = "paired test"):
    """Backbone × strategy fold-mean AUC, one panel per classifier, on the fixed scale AUC_SCALE; each row's
    best strategy in bold, and the strategies not distinguishable from it (Holm p ≥ alpha) outlined."""
    from matplotlib.patches import Rectangle

    plt = _plt()
    low, high = AUC_SCALE
    data = results[results["dataset"] == dataset]
    backbones = list(dict.fromkeys(data["backbone"]))
    strategies = sorted(set(data["strategy"]))
    marks = indistinguishable_from_best(results, tests, dataset, alpha) if tests is not None else {}
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.5 * len(strategies), 2.0 + 0.45 * len(backbones)),
                             sharey=True, squeeze=False, layout="constrained")
    for ax, classifier in zip(axes[0], CLASSIFIERS):
        grid = (data[data["classifier"] == classifier]
                .pivot(index="backbone", columns="strategy", values="auc_mean").reindex(index=backbones,
                                                                                        columns=strategies))
        image = ax.imshow(np.clip(grid.to_numpy(), low, high), vmin=low, vmax=high, cmap="viridis", aspect="auto")
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            best, tied = marks.get((backbones[i], classifier), (None, set()))
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=8,
                    fontweight="bold" if strategies[j] == best else "normal",
                    color="white" if value < (low + high) / 2 else "black")
            if strategies[j] in tied:
                ax.add_patch(Rectangle((j - 0.46, i - 0.42), 0.92, 0.84, fill=False, edgecolor="red", linewidth=1.5,
                                       linestyle="--"))
        ax.set_xticks(range(len(strategies)), [f"{s} %" for s in strategies])
        ax.set_yticks(range(len(backbones)), backbones)
        ax.set_title(f"{CLASSIFIER_LABELS[classifier]}", fontsize=10)
        ax.set_xlabel("layers fine-tuned")
    fig.colorbar(image, ax=axes[0].tolist(),
                 label=f"AUC (fold mean), fixed scale {low:g}–{high:g}\nvalues below {low:g} shown as {low:g}")
    fig.suptitle(f"{dataset}: AUC by backbone and strategy\nbold: the row's best; dashed red: not "
                 f"distinguishable from it ({test_name}, Holm p ≥ {alpha:g})", fontsize=9)
    return fig


def two_best_backbones(best: pd.DataFrame, dataset: str) -> pd.DataFrame:
    return best[best["dataset"] == dataset].sort_values("auc", ascending=False, kind="stable").head(2)


def save_roc_overlay(path, frame: pd.DataFrame, results: pd.DataFrame, picks: pd.DataFrame, dataset: str) -> None:
    """Per picked backbone (at its best strategy): pooled out-of-fold ROC of the MLP head and of the SVM. The
    legend gives the pooled curve's own AUC, then the fold-mean AUC (the tables' statistic) with its interval."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 4.2), squeeze=False)
    for ax, pick in zip(axes[0], picks.itertuples()):
        for classifier in CLASSIFIERS:
            score = frame[score_column(pick.backbone, pick.strategy, classifier)]
            fpr, tpr, _ = roc_curve(frame["y"], score)
            r = results[(results["dataset"] == dataset) & (results["backbone"] == pick.backbone)
                        & (results["strategy"] == pick.strategy) & (results["classifier"] == classifier)].iloc[0]
            interval = "no interval" if np.isnan(r.auc_low) else f"[{r.auc_low:.2f}, {r.auc_high:.2f}]"
            ax.plot(fpr, tpr, label=f"{CLASSIFIER_LABELS[classifier]}: pooled {roc_auc_score(frame['y'], score):.3f}; "
                                    f"fold mean {r.auc_mean:.3f} {interval}")
        ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
        ax.set(xlabel="false positive rate", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.set_title(f"{pick.backbone}, {pick.strategy} % fine-tuned", fontsize=10)
        ax.legend(loc="lower right", fontsize=7, title="AUC of the pooled curve; fold mean [interval]",
                  title_fontsize=7)
    fig.suptitle(f"{dataset}: pooled out-of-fold ROC, MLP head vs SVM", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_confusion_grid(path, frame: pd.DataFrame, picks: pd.DataFrame, dataset: str) -> None:
    """Confusion matrices of the out-of-fold predictions: a row per picked backbone, MLP and SVM columns."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = _plt()
    fig, axes = plt.subplots(len(picks), 2, figsize=(7, 3.3 * len(picks)), squeeze=False)
    for row_axes, pick in zip(axes, picks.itertuples()):
        for ax, classifier in zip(row_axes, CLASSIFIERS):
            predicted = (frame[score_column(pick.backbone, pick.strategy, classifier)] >= THRESHOLDS[classifier])
            ConfusionMatrixDisplay.from_predictions(frame["y"], predicted.astype(int), labels=[0, 1],
                                                    display_labels=list(CLASS_NAMES), ax=ax, colorbar=False)
            ax.set_title(f"{pick.backbone} {pick.strategy} % — {CLASSIFIER_LABELS[classifier]}", fontsize=9)
    fig.suptitle(f"{dataset}: out-of-fold confusion matrices", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def config_label(dataset: str, backbone: str, classifier: str) -> str:
    """A line of the cross-strategy plot: one (dataset, backbone, classifier)."""
    return f"{dataset} · {backbone} · {CLASSIFIER_LABELS[classifier]}"


def auc_by_strategy_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The cross-strategy plot's data: one row per configuration (config, dataset, backbone, classifier,
    strategy, auc, auc_low, auc_high), sorted so that each line runs from the fewest trainable layers up."""
    rows = results.assign(config=[config_label(r.dataset, r.backbone, r.classifier) for r in results.itertuples()])
    rows = rows.rename(columns={"auc_mean": "auc"})[
        ["config", "dataset", "backbone", "classifier", "strategy", "auc", "auc_low", "auc_high"]]
    return rows.sort_values(["dataset", "backbone", "classifier", "strategy"], kind="stable").round(4)


def save_auc_by_strategy(path, results: pd.DataFrame, dataset: str, alpha: float, interval_name: str) -> None:
    """`auc_by_strategy` saved to `path`."""
    plt = _plt()
    fig = auc_by_strategy(results, dataset, alpha, interval_name)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def auc_by_strategy(results: pd.DataFrame, dataset: str, alpha: float, interval_name: str):
    """One panel per backbone: fold-mean AUC against the strategy (% of the last layers trainable), a line per
    classifier with its 1 − alpha interval as a band, chance (0.5) dotted, the panel's best point ringed."""
    plt = _plt()
    data = results[results["dataset"] == dataset]
    backbones = list(dict.fromkeys(data["backbone"]))
    strategies = sorted(set(data["strategy"]))
    lowest = data[["auc_low", "auc_mean"]].min().min()
    floor = min(0.3, np.floor(10 * lowest) / 10) if np.isfinite(lowest) else 0.3  # 0.3–1, or lower to show all
    fig, axes = plt.subplots(1, len(backbones), figsize=(1.2 + 3.2 * len(backbones), 3.6), sharey=True,
                             squeeze=False, layout="constrained")
    for ax, backbone in zip(axes[0], backbones):
        panel = data[data["backbone"] == backbone]
        for classifier, colour in zip(CLASSIFIERS, ("tab:blue", "tab:orange")):
            line = panel[panel["classifier"] == classifier].sort_values("strategy")
            ax.fill_between(line["strategy"], line["auc_low"], line["auc_high"], color=colour, alpha=0.18,
                            linewidth=0)
            ax.plot(line["strategy"], line["auc_mean"], marker="o", color=colour, label=CLASSIFIER_LABELS[classifier])
        best = panel.loc[panel["auc_mean"].idxmax()]
        ax.scatter([best.strategy], [best.auc_mean], s=160, facecolors="none", edgecolors="black", zorder=3,
                   label=f"best: {best.strategy} %, {CLASSIFIER_LABELS[best.classifier]} {best.auc_mean:.3f}")
        ax.axhline(0.5, linestyle=":", color="grey")
        ax.set_xticks(strategies, [f"{s}" for s in strategies])
        ax.set(xlabel="layers fine-tuned (%)", ylim=(floor, 1.0), title=backbone)
        ax.legend(loc="upper left", fontsize=7)
    axes[0][0].set_ylabel("AUC (out-of-fold, fold mean)")
    level = round(100 * (1 - alpha))
    fig.suptitle(f"{dataset}: does fine-tuning more layers help, and does the SVM beat the MLP head?\n"
                 f"bands: {level} % intervals ({interval_name}); dotted: chance", fontsize=9)
    return fig


def roc_rows(study_predictions: dict[str, pd.DataFrame], results: pd.DataFrame, grid: int = 101) -> pd.DataFrame:
    """Every configuration's pooled out-of-fold ROC on one false-positive-rate grid (config, auc, best, fpr, tpr):
    one DVC plot for the whole study, whatever its size. `config` names the configuration only, so that `dvc plots
    diff` pairs a configuration's curves across revisions (its fold-mean AUC is the `auc` column: the tooltip); the
    configuration with the best AUC has best = "yes" (drawn thicker)."""
    from sklearn.metrics import roc_curve

    fpr_grid = np.linspace(0, 1, grid)
    top = results["auc_mean"].idxmax()
    parts = []
    for index, r in results.iterrows():
        frame = study_predictions[r.dataset]
        fpr, tpr, _ = roc_curve(frame["y"], frame[score_column(r.backbone, r.strategy, r.classifier)])
        name = f"{r.dataset} · {r.backbone} · {r.strategy} % · {CLASSIFIER_LABELS[r.classifier]}"
        parts.append(pd.DataFrame({"config": name, "auc": r.auc_mean, "best": "yes" if index == top else "no",
                                   "fpr": fpr_grid, "tpr": np.interp(fpr_grid, fpr, tpr)}))
    return pd.concat(parts, ignore_index=True).round(4)
