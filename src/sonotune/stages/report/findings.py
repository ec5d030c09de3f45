"""The study's verdicts in words: the best strategy per backbone against its runner-up, MLP vs SVM per dataset,
and the one-screen summary (`summary.md`, printed at the end of `dvc repro`) that puts them together."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from sonotune import tracking
from sonotune.config import Params
from sonotune.layout import PRETRAIN_ROOT
from sonotune.stages.report.statistics import INTERVAL_NAMES, TEST_NAMES
from sonotune.stages.report.tables import table3_markdown, table4_rows
from sonotune.vocabulary import CLASSIFIER_LABELS

TABLE3_INLINE_ROWS = 12  # above this, the summary points to table3.md instead of repeating it
TABLE4_INLINE_ROWS = 6
SINGLE_CLASS_NAMED = 6  # configurations named in the summary's one-class sentence, the rest counted


def best_per_backbone(results: pd.DataFrame, tests: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, backbone): the best (strategy, classifier) by fold-mean AUC, and its paired test against
    the runner-up strategy with the same classifier (NaN when the study holds one strategy)."""
    rows = []
    for (dataset, backbone), group in results.groupby(["dataset", "backbone"], sort=False):
        best = group.loc[group["auc_mean"].idxmax()]
        rivals = group[(group["classifier"] == best.classifier) & (group["strategy"] != best.strategy)]
        row = {"dataset": dataset, "backbone": backbone, "strategy": best.strategy, "classifier": best.classifier,
               "auc": best.auc_mean, "auc_low": best.auc_low, "auc_high": best.auc_high,
               "runner_up": None, "runner_up_auc": np.nan, "p_value": np.nan, "p_holm": np.nan, "no_test": None}
        if len(rivals):
            runner = rivals.loc[rivals["auc_mean"].idxmax()]
            pair = {str(best.strategy), str(runner.strategy)}
            test = tests[(tests["dataset"] == dataset) & (tests["family"] == f"strategy:{backbone}:{best.classifier}")
                         & tests.apply(lambda t: {t.a, t.b} == pair, axis=1)].iloc[0]
            row |= {"runner_up": runner.strategy, "runner_up_auc": runner.auc_mean,
                    "p_value": test.p_value, "p_holm": test.p_holm, "no_test": test.no_test}
        rows.append(row)
    return pd.DataFrame(rows)


def _p(value: float) -> str:
    return "n/a" if math.isnan(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def _interval(low: float, high: float) -> str:
    return "[no interval]" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"


def best_lines(best: pd.DataFrame, alpha: float, test_name: str) -> list[str]:
    lines = []
    for row in best.itertuples():
        head = (f"- {row.dataset} / {row.backbone}: {row.strategy} % with {CLASSIFIER_LABELS[row.classifier]}, "
                f"AUC {row.auc:.3f} {_interval(row.auc_low, row.auc_high)}")
        if row.runner_up is None:
            lines.append(f"{head}; the study holds one strategy, no runner-up to compare")
            continue
        if isinstance(row.no_test, str):
            lines.append(f"{head}; runner-up {row.runner_up} % ({row.runner_up_auc:.3f}): no calibrated test, "
                         f"{row.no_test}")
            continue
        verdict = "distinguishable" if row.p_holm < alpha else "not distinguishable"
        lines.append(f"{head}; runner-up {row.runner_up} % ({row.runner_up_auc:.3f}): {test_name} "
                     f"p {_p(row.p_value)}, Holm p {_p(row.p_holm)} → {verdict} at α = {alpha:g}")
    return lines


def classifier_lines(tests: pd.DataFrame, alpha: float) -> list[str]:
    lines = []
    for dataset, group in tests[tests["family"] == "classifier"].groupby("dataset", sort=False):
        ahead = int((group["difference"] < 0).sum())
        if group["no_test"].notna().any():
            lines.append(f"- {dataset}: SVM ahead in {ahead} of {len(group)} configurations; no calibrated test, "
                         f"{group['no_test'].dropna().iloc[0]}")
            continue
        significant = group[group["distinguishable"]]
        detail = "; ".join(f"{t.backbone} {t.strategy} %: {_sides(t, 'MLP', 'SVM')[0][0]} "
                           f"{abs(t.difference):+.3f}, Holm p {_p(t.p_holm)}" for t in significant.itertuples())
        lines.append(f"- {dataset}: SVM ahead in {ahead} of {len(group)} configurations; "
                     f"{len(significant)} distinguishable after Holm at α = {alpha:g}"
                     + (f" ({detail})" if detail else ""))
    return lines


def _sides(t, name_a=None, name_b=None) -> tuple[tuple[str, float], tuple[str, float]]:
    """A comparison row's two sides as (name, AUC), the winner first: `difference` is side a's AUC minus side b's."""
    a, b = (name_a or t.a, t.auc_a), (name_b or t.b, t.auc_b)
    return (a, b) if t.difference > 0 else (b, a)


def _plain_comparison(t) -> str:
    """One comparison row of `statistics.comparisons` as the two things compared, each with its AUC."""
    if t.family == "classifier":
        (winner, auc_w), (loser, auc_l) = _sides(t, "MLP head", "SVM")
        return (f"on {t.dataset}, {t.backbone} at {int(t.strategy)} %, the {winner} scores AUC {auc_w:.3f} against the "
                f"{loser}'s {auc_l:.3f}")
    (winner, auc_w), (loser, auc_l) = _sides(t)
    if t.family.startswith("backbone:"):
        return (f"on {t.dataset} with the {CLASSIFIER_LABELS[t.classifier]} at {int(t.strategy)} %, {winner} scores AUC "
                f"{auc_w:.3f} against {loser}'s {auc_l:.3f}")
    return (f"on {t.dataset}, {t.backbone} with the {CLASSIFIER_LABELS[t.classifier]}, training the last {winner} % "
            f"of the layers scores AUC {auc_w:.3f} against {auc_l:.3f} at {loser} %")


def headline_lines(tests: pd.DataFrame, alpha: float) -> list[str]:
    """The study's clearest answer in one sentence a newcomer can read: the distinguishable comparison with the
    smallest Holm p (ties: the largest difference), or why there is none."""
    tested = tests[tests["p_holm"].notna()]
    if tested.empty:
        return ["In one sentence: no comparison could be tested (see the reasons below)."]
    found = tested[tested["distinguishable"]]
    if found.empty:
        return [f"In one sentence: none of the {len(tested)} comparisons is distinguishable at α = {alpha:g} — every "
                "difference below is within what re-sampling the patients could produce; more images, or cv.repeats, "
                "narrow the intervals."]
    ranked = found.assign(size=found["difference"].abs()).sort_values(["p_holm", "size"], ascending=[True, False])
    best = ranked.iloc[0]
    sign = 1 if best.difference > 0 else -1  # the winner's margin, and its interval, as positive numbers
    low, high = sorted((sign * best.low, sign * best.high))
    more = f" ({len(found) - 1} more distinguishable below)" if len(found) > 1 else ""
    return [f"In one sentence: {_plain_comparison(best)} — a margin of {sign * best.difference:.3f} "
            f"[{low:.3f}, {high:.3f}], Holm p {_p(best.p_holm)}: too large to be the luck of which patients were "
            f"drawn{more}."]


def backbone_lines(tests: pd.DataFrame, alpha: float) -> list[str]:
    """Per dataset: how many backbone comparisons (same classifier and strategy) are distinguishable, and which."""
    lines = []
    paired = tests[tests["family"].str.startswith("backbone:")]
    for dataset, group in paired.groupby("dataset", sort=False):
        if group["no_test"].notna().any():
            lines.append(f"- {dataset}: {len(group)} comparisons; no calibrated test, {group['no_test'].dropna().iloc[0]}")
            continue
        found = group[group["distinguishable"]]
        detail = "; ".join(f"{CLASSIFIER_LABELS[t.classifier]} {t.strategy} %: {_sides(t)[0][0]} "
                           f"+{abs(t.difference):.3f} over {_sides(t)[1][0]}, Holm p {_p(t.p_holm)}"
                           for t in found.itertuples())
        lines.append(f"- {dataset}: {len(found)} of {len(group)} distinguishable after Holm at α = {alpha:g}"
                     + (f" ({detail})" if detail else ""))
    return lines


def starting_weights_line(params: Params) -> str:
    """Where the backbones' weights came from, in words: what "transfer" means for this study."""
    weights = params.finetune.weights
    if weights is None:
        return "Backbones start from random weights (`finetune.weights: null`): nothing is transferred."
    if weights == "imagenet":
        return "Backbones start from ImageNet weights (`finetune.weights: imagenet`): transfer from natural images."
    if Path(weights).parts[:2] == PRETRAIN_ROOT.parts:
        return (f"Backbones start from weights the pretrain stage trained on a source task ({params.pretrain.source}: "
                f"{params.pretrain.n_images} fresh cases, none of them in this study; docs/pretrain.md): transfer "
                "from the study's own domain. At 0 % those weights are all the backbone knows.")
    return f"Backbones start from the weights file `{weights}` (`finetune.weights`)."


def table4_lines(t4: pd.DataFrame, strategy: int) -> list[str]:
    """Table 4 inline (fold means at `strategy`), or a pointer to table4.md when it is long."""
    if len(t4) > TABLE4_INLINE_ROWS:
        return [f"Table 4 ({len(t4)} rows, {strategy} %; with specificity, balanced accuracy, MCC): reports/table4.md"]
    return [f"Table 4 at {strategy} % (fold means; † = folds called all one class):", "", *table4_rows(t4)]


def single_class_lines(results: pd.DataFrame) -> list[str]:
    """One plain sentence naming the configurations whose classifier called every image one class in a fold."""
    flagged = results[results["single_class_folds"] > 0]
    if flagged.empty:
        return []
    named = [f"{r.dataset} / {r.backbone} {r.strategy} % {CLASSIFIER_LABELS[r.classifier]} "
             f"({r.single_class_folds} of {r.n_folds} folds)" for r in flagged.head(SINGLE_CLASS_NAMED).itertuples()]
    more = len(flagged) - len(named)
    return ["", f"One class only: {len(flagged)} of {len(results)} configurations called every image of a fold "
                f"benign or every image malignant (their accuracy there is the prevalence; judge them by balanced "
                f"accuracy and MCC): {', '.join(named)}" + (f", and {more} more." if more else ".")]


def summary_text(params: Params, results: pd.DataFrame, table: pd.DataFrame, best: pd.DataFrame,
                 tests: pd.DataFrame, t4_strategy: int, t4: pd.DataFrame, variance: str) -> str:
    cfg = params.report
    named = tests["test"].dropna().unique() if "test" in tests else []
    test_name = " / ".join(named) if len(named) else TEST_NAMES[cfg.paired_test]
    top = results.loc[results["auc_mean"].idxmax()]
    repeats = f" × {params.cv.repeats} repeats" if params.cv.repeats > 1 else ""
    lines = [f"# sonotune study — {', '.join(params.study.datasets)} · protocol `{params.protocol}` · "
             f"{params.cv.n_splits}-fold CV{repeats}", "", *headline_lines(tests, cfg.alpha), "",
             starting_weights_line(params), ""]
    if len(table) <= TABLE3_INLINE_ROWS:
        lines += table3_markdown(table, cfg.alpha, INTERVAL_NAMES[cfg.interval]).splitlines()
    else:
        lines.append(f"Table 3 ({len(table)} rows): reports/table3.md")
    lines += ["", "Best strategy per backbone (vs the runner-up strategy, same classifier; Holm within backbone):"]
    lines += best_lines(best, cfg.alpha, test_name)
    if len(params.study.backbones) > 1:
        lines += ["", f"Backbones on the same folds ({test_name}; Holm within each classifier and strategy):"]
        lines += backbone_lines(tests, cfg.alpha)
    lines += ["", f"MLP vs SVM on the same folds ({test_name}, Holm within dataset):"]
    lines += classifier_lines(tests, cfg.alpha)
    lines += ["", *table4_lines(t4, t4_strategy)]
    lines += single_class_lines(results)
    lines += ["", variance]
    lines += ["", f"Best: {top.dataset} / {top.backbone} at {top.strategy} % with the "
                  f"{CLASSIFIER_LABELS[top.classifier]} head "
                  f"(AUC {top.auc_mean:.3f} {_interval(top.auc_low, top.auc_high)}; sensitivity "
                  f"{top.recall_mean:.3f}, specificity {top.specificity_mean:.3f}, balanced accuracy "
                  f"{top.balanced_accuracy_mean:.3f}, MCC {top.mcc_mean:.3f}).",
              f"Files: reports/table3.md, table3_paper_layout.md, table4.md ({t4_strategy} %), comparisons.csv, "
              "figures/ (auc_by_strategy_<dataset>.png: the study in one picture)."]
    return "\n".join(lines) + "\n"


def mlflow_lines(mlflow_note: str) -> str:
    """What the report logged to MLflow and how to browse the runs: printed, not written to summary.md (they
    name this machine's store)."""
    return f"{mlflow_note}\n{browse_line()}\n"


def browse_line() -> str:
    """How to see the runs: the local store through `mlflow ui`, or the team server's address (password masked)."""
    from sonotune import team

    uri = tracking.tracking_uri()
    if team.is_server(uri):
        return f"Browse the runs: {team.redact(uri)}"
    return f"Browse the runs: mlflow ui --backend-store-uri {uri}"
