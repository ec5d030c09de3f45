"""Every sentence of the summary, built here and nowhere else: phrase builders over the rows of
`statistics.comparisons` and `findings.best_per_backbone`, each saying no more than its statistic.

The words: a comparison is *different* (its p, Holm-corrected over every comparison of the report, below α),
*equivalent within ±m* (two one-sided tests on the same standard error, Holm over every comparison, below α) or
*inconclusive* (neither shown). "Highest AUC" is a point estimate and is never called "best" without its
verdict against the runner-up. A p below α says the difference is unlikely under no true difference for these
trained models; it says nothing about patients (the phantom has none) or about retraining (`variance_note`).
tests/stages/report/test_wording.py holds each builder to its words.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from sonotune.config import Params
from sonotune.layout import PRETRAIN_ROOT
from sonotune.stages.report.tables import table4_rows
from sonotune.vocabulary import CLASSIFIER_LABELS

TABLE4_INLINE_ROWS = 6
SINGLE_CLASS_NAMED = 6  # configurations named in the summary's one-class sentence, the rest counted


def p_text(value: float) -> str:
    return "n/a" if math.isnan(value) else ("< 0.001" if value < 0.001 else f"{value:.3f}")


def interval_text(low: float, high: float) -> str:
    return "[no interval]" if math.isnan(low) else f"[{low:.2f}, {high:.2f}]"


def verdict_word(verdict: str, margin: float) -> str:
    """The three answers: different / equivalent within ±m / inconclusive."""
    return f"equivalent within ±{margin:g}" if verdict == "equivalent" else verdict


def verdict_phrase(t, margin: float, sign: int = 1) -> str:
    """One comparison's verdict with its numbers: ΔAUC (`sign` · (a − b)) and its (1 − α) interval, and the Holm
    p behind a claim (the difference test's for *different*, the equivalence test's for *equivalent*)."""
    if isinstance(t.no_test, str):
        return f"inconclusive (no calibrated test: {t.no_test})"
    low, high = sorted((sign * t.low, sign * t.high))
    numbers = f"ΔAUC {sign * t.difference:+.3f} [{low:+.3f}, {high:+.3f}]"
    if t.verdict == "different":
        inside = (f"; smaller than ±{margin:g}, equivalence Holm p {p_text(t.p_equivalent_holm)}"
                  if t.within_margin else "")
        return f"different ({numbers}, Holm p {p_text(t.p_holm)}{inside})"
    if t.verdict == "equivalent":
        return f"{verdict_word('equivalent', margin)} ({numbers}, equivalence Holm p {p_text(t.p_equivalent_holm)})"
    return f"inconclusive ({numbers})"


def correction_phrase(n: int) -> str:
    return f"Holm over all {n} comparisons of this report"


def count_phrase(tests: pd.DataFrame, margin: float) -> str:
    """'k different, j equivalent within ±m, i inconclusive, of N comparisons'."""
    counts = tests["verdict"].value_counts()
    return (f"{counts.get('different', 0)} different, {counts.get('equivalent', 0)} "
            f"{verdict_word('equivalent', margin)}, {counts.get('inconclusive', 0)} inconclusive, of {len(tests)} "
            "comparisons")


def sides(t, name_a=None, name_b=None) -> tuple[tuple[str, float], tuple[str, float]]:
    """A comparison row's two sides as (name, AUC), the winner first: `difference` is side a's AUC minus side b's."""
    a, b = (name_a or t.a, t.auc_a), (name_b or t.b, t.auc_b)
    return (a, b) if t.difference > 0 else (b, a)


def plain_comparison(t) -> str:
    """One comparison row of `statistics.comparisons` as the two things compared, each with its AUC."""
    if t.family == "classifier":
        (winner, auc_w), (loser, auc_l) = sides(t, "MLP head", "SVM")
        return (f"on {t.dataset}, {t.backbone} at {int(t.strategy)} %, the {winner} scores AUC {auc_w:.3f} against the "
                f"{loser}'s {auc_l:.3f}")
    (winner, auc_w), (loser, auc_l) = sides(t)
    if t.family.startswith("backbone:"):
        return (f"on {t.dataset} with the {CLASSIFIER_LABELS[t.classifier]} at {int(t.strategy)} %, {winner} scores AUC "
                f"{auc_w:.3f} against {loser}'s {auc_l:.3f}")
    return (f"on {t.dataset}, {t.backbone} with the {CLASSIFIER_LABELS[t.classifier]}, training the last {winner} % "
            f"of the layers scores AUC {auc_w:.3f} against {auc_l:.3f} at {loser} %")


def headline_lines(tests: pd.DataFrame, alpha: float, margin: float) -> list[str]:
    """The study's clearest answer in one sentence a newcomer can read: the counts of the three answers, and the
    different comparison with the smallest Holm p (ties: the largest difference), or that none is different."""
    tested = tests[tests["p_value"].notna()]
    if tested.empty:
        return ["In one sentence: no comparison could be tested (see the reasons below)."]
    counts = count_phrase(tests, margin)
    found = tests[tests["verdict"] == "different"]
    if found.empty:
        return [f"In one sentence: none of the {len(tests)} comparisons is different at α = {alpha:g} ({counts}); "
                "an inconclusive one is not evidence of no difference — more images, or cv.repeats, narrow the "
                "intervals."]
    ranked = found.assign(size=found["difference"].abs()).sort_values(["p_holm", "size"], ascending=[True, False])
    best = ranked.iloc[0]
    sign = 1 if best.difference > 0 else -1  # the winner's margin, and its interval, as positive numbers
    low, high = sorted((sign * best.low, sign * best.high))
    return [f"In one sentence: {plain_comparison(best)} — a margin of {sign * best.difference:.3f} "
            f"[{low:.3f}, {high:.3f}], Holm p {p_text(best.p_holm)} ({counts})."]


def recommendation_lines(best: pd.DataFrame, tests: pd.DataFrame, alpha: float, margin: float) -> list[str]:
    """The paper's two questions per backbone, answered first in the summary: which strategy (the highest AUC and
    each other strategy's verdict against it, same classifier) and whether the SVM helps (its verdict against
    the MLP head at that strategy, and the counts over every strategy)."""
    lines = [f"## The answer ({correction_phrase(len(tests))}, α = {alpha:g}; *equivalent*: the "
             f"{100 * (1 - alpha):g} % interval of ΔAUC within ±{margin:g}; *inconclusive*: neither shown)", ""]
    for row in best.itertuples():
        rows = tests[tests["dataset"] == row.dataset]
        strategy_rows = rows[rows["family"] == f"strategy:{row.backbone}:{row.classifier}"]
        against = []
        for t in strategy_rows.itertuples():
            if str(row.strategy) not in (t.a, t.b):
                continue
            other, sign = (t.b, 1) if t.a == str(row.strategy) else (t.a, -1)
            against.append(f"{other} % {verdict_phrase(t, margin, -sign)}")
        which = (f"- {row.dataset} / {row.backbone} — which strategy: the highest AUC is {row.strategy} % with the "
                 f"{CLASSIFIER_LABELS[row.classifier]} ({row.auc:.3f} {interval_text(row.auc_low, row.auc_high)})")
        which += ("; the study holds one strategy, no runner-up to compare." if not against else
                  "; each other strategy against it: " + "; ".join(against) + ".")
        lines.append(f"{which} MLP or SVM: {svm_phrase(rows, row.backbone, row.strategy, margin)}")
    return lines


def svm_phrase(rows: pd.DataFrame, backbone: str, strategy, margin: float) -> str:
    """Does the SVM help this backbone: its verdict against the MLP head at `strategy`, then over all strategies."""
    own = rows[(rows["family"] == "classifier") & (rows["backbone"] == backbone)]
    at = own[own["strategy"] == int(strategy)]
    head = ""
    if len(at):
        t = at.iloc[0]
        head = (f"at {int(strategy)} % the SVM (AUC {t.auc_b:.3f}) against the MLP head ({t.auc_a:.3f}) is "
                f"{verdict_phrase(t, margin, sign=-1)}")
    counts = own["verdict"].value_counts()
    over = (f"over its {len(own)} strategies: {counts.get('different', 0)} different "
            f"(SVM ahead in {int(((own['verdict'] == 'different') & (own['difference'] < 0)).sum())}), "
            f"{counts.get('equivalent', 0)} {verdict_word('equivalent', margin)}, "
            f"{counts.get('inconclusive', 0)} inconclusive")
    return f"{head}; {over}." if head else f"{over}."


KINDS = {"strategy:": "strategies", "backbone:": "backbones", "classifier": "MLP vs SVM"}


def family_line(group: pd.DataFrame, kind: str, margin: float, describe) -> str:
    """One dataset's comparisons of one kind: the counts of the three answers, the different ones described by
    `describe(row)`."""
    head = f"- {group['dataset'].iloc[0]}, {kind}:"
    if group["no_test"].notna().any():
        return f"{head} {len(group)} comparisons; no calibrated test, {group['no_test'].dropna().iloc[0]}"
    counts = group["verdict"].value_counts()
    detail = "; ".join(describe(t) for t in group[group["verdict"] == "different"].itertuples())
    return (f"{head} {counts.get('different', 0)} of {len(group)} different, {counts.get('equivalent', 0)} "
            f"{verdict_word('equivalent', margin)}, {counts.get('inconclusive', 0)} inconclusive"
            + (f" ({detail})" if detail else ""))


def comparison_lines(tests: pd.DataFrame, margin: float) -> list[str]:
    """Per dataset and kind of comparison (strategies, backbones, MLP vs SVM), one line: `family_line`."""
    describe = {
        "strategy:": lambda t: (f"{t.backbone} {CLASSIFIER_LABELS[t.classifier]}: {sides(t)[0][0]} % "
                                f"+{abs(t.difference):.3f} over {sides(t)[1][0]} %, Holm p {p_text(t.p_holm)}"),
        "backbone:": lambda t: (f"{CLASSIFIER_LABELS[t.classifier]} {t.strategy} %: {sides(t)[0][0]} "
                                f"+{abs(t.difference):.3f} over {sides(t)[1][0]}, Holm p {p_text(t.p_holm)}"),
        "classifier": lambda t: (f"{t.backbone} {t.strategy} %: {sides(t, 'MLP', 'SVM')[0][0]} "
                                 f"+{abs(t.difference):.3f}, Holm p {p_text(t.p_holm)}")}
    lines = []
    for _, rows in tests.groupby("dataset", sort=False):
        for prefix, kind in KINDS.items():
            group = rows[rows["family"].str.startswith(prefix)]
            if len(group):
                lines.append(family_line(group, kind, margin, describe[prefix]))
    return lines


def highest_auc_line(top) -> str:
    """The configuration with the highest AUC — a point estimate, said as such."""
    classifier = "MLP head" if top.classifier == "mlp" else CLASSIFIER_LABELS[top.classifier]
    return (f"Best: {top.dataset} / {top.backbone} at {top.strategy} % with the {classifier} "
            f"— the highest AUC, a point estimate whose comparisons are in the answer above (AUC "
            f"{top.auc_mean:.3f} {interval_text(top.auc_low, top.auc_high)}; sensitivity {top.recall_mean:.3f}, "
            f"specificity {top.specificity_mean:.3f}, balanced accuracy {top.balanced_accuracy_mean:.3f}, "
            f"MCC {top.mcc_mean:.3f}).")


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


def table4_lines(t4: pd.DataFrame, strategy: int) -> list[str]:
    """Table 4 inline (fold means at `strategy`), or a pointer to table4.md when it is long."""
    if len(t4) > TABLE4_INLINE_ROWS:
        return [f"Table 4 ({len(t4)} rows, {strategy} %; with specificity, balanced accuracy, MCC): reports/table4.md"]
    return [f"Table 4 at {strategy} % (fold means; † = folds called all one class):", "", *table4_rows(t4)]
