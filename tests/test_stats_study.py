"""Study-wide error control and the three answers, proven by simulation through the report's own decision code.

Each simulated study scores every configuration of a grid (backbones × strategies × MLP/SVM) on the same
Mendeley-shaped images (50 lesions × 5 frames, 5 folds by lesion and class). Scores:
`delta_c · y + u_lesion + w_backbone,lesion + v_config,lesion + e_image`: a lesion effect every configuration
shares, one its backbone's configurations share, one of its own, and image noise — the clustered setting where
the comparisons of one study are correlated. The comparisons are `statistics.comparison_pairs` (what the report
compares), each tested by `stats.clustered_delong_tests` (the report's default test, vectorised over the pairs
of a study), and every study's comparisons go through `statistics.verdicts` (Holm over all of them), the
function `comparisons` calls. Studies run as rows of one array, so a grid of 385 comparisons costs seconds.

- Global null (every configuration the same true AUC): the share of studies with ANY "different" claim must stay
  ≤ alpha + 2 Monte Carlo SE, on the demo's grid (12 comparisons, 1,000 studies) and the paper's (385, 200).
- Power: one backbone truly better by ΔAUC 0.20 at every strategy; the share of studies calling its
  comparisons different is measured (docs/statistics.md prints it), and must not be trivial.
- Equivalence: a true difference exactly at the margin must be called "equivalent" in ≤ alpha + 2 SE of studies
  (Mendeley- and BUSI-shaped); with no true difference on BUSI-shaped data it is called in most.

Rewrite the table of docs/statistics.md (a test keeps them equal):  PYTHONPATH=src:. python tests/test_stats_study.py
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from sonotune import stats
from sonotune.config import Report
from sonotune.stages.report.statistics import comparison_pairs, verdicts
from sonotune.stages.report.load import score_column
from sonotune.vocabulary import CLASSIFIERS

ALPHA, MARGIN = Report().alpha, Report().equivalence_margin
DELTA = 1.5  # the null's separation: true AUC 0.80
SHARED_SD, BACKBONE_SD, CONFIG_SD, IMAGE_SD = 1.0, 0.5, 0.5, 0.5
FOLDS = 5
SHAPES = {"mendeley": (5, 30, 20), "busi": (1, 213, 427)}  # (frames per lesion, malignant, benign lesions)
GRIDS = {"demo": (("vgg16", "resnet50"), (0, 15)),
         "paper": (("vgg16", "vgg19", "resnet50", "resnet101", "inceptionv3"), (0, 15, 25, 50, 75, 85, 100))}
STUDIES = {"demo": 1000, "paper": 200}
POWER_STUDIES = 200
POWER_GAINS = (0.10, 0.20)
EQUIVALENCE_OWN = 0.3  # MLP vs SVM on the same features: most of their noise shared


def true_auc(delta: float) -> float:
    return float(norm.cdf(delta / np.sqrt(2 * (SHARED_SD ** 2 + BACKBONE_SD ** 2 + CONFIG_SD ** 2 + IMAGE_SD ** 2))))


def delta_for_auc(auc: float) -> float:
    return brentq(lambda d: true_auc(d) - auc, 0.0, 10.0)


def grid_configs(grid: str) -> tuple[list[str], np.ndarray, list[dict]]:
    """The grid's configurations (score columns), each one's backbone index, and the report's comparisons."""
    backbones, strategies = GRIDS[grid]
    configs = [(b, s, c) for b in backbones for s in strategies for c in CLASSIFIERS]
    return ([score_column(*c) for c in configs], np.array([backbones.index(c[0]) for c in configs]),
            comparison_pairs(backbones, strategies))


def simulate_scores(rng, deltas: np.ndarray, backbone_of: np.ndarray, shape: str = "mendeley", own: float = 1.0):
    """One study: labels, every configuration's scores (configs × images), lesion ids, folds. `own` < 1 moves
    that share of the configuration-specific lesion and image noise into noise every configuration shares (two
    classifiers on the same features), the total — and so every true AUC — unchanged."""
    frames, malignant, benign = SHAPES[shape]
    n_lesions = malignant + benign
    lesion_class = (np.arange(n_lesions) < malignant).astype(int)
    lesion_fold = np.empty(n_lesions, dtype=int)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(lesion_class == label))
        lesion_fold[members] = np.arange(len(members)) % FOLDS
    lesion = np.repeat(np.arange(n_lesions), frames)
    y = lesion_class[lesion]
    common = np.sqrt(1 - own ** 2)
    shared = rng.normal(0, 1, (2, n_lesions)).T @ [SHARED_SD, CONFIG_SD * common]
    backbone = rng.normal(0, BACKBONE_SD, (backbone_of.max() + 1, n_lesions))[backbone_of]
    lesion_noise = rng.normal(0, CONFIG_SD * own, (len(deltas), n_lesions))
    image_noise = rng.normal(0, IMAGE_SD * own, (len(deltas), len(y))) + rng.normal(0, IMAGE_SD * common, len(y))
    scores = deltas[:, None] * y + (shared + backbone + lesion_noise)[:, lesion] + image_noise
    return y, scores, lesion.astype(str), lesion_fold[lesion]


def study_tests(grid: str, n_studies: int, deltas: np.ndarray | None = None, seed: int = 0
                ) -> tuple[dict, list, np.ndarray]:
    """Every study's comparisons tested (`clustered_delong_tests`) and decided together (`verdicts`); also the
    raw p-values (studies × comparisons)."""
    columns, backbone_of, pairs = grid_configs(grid)
    deltas = np.full(len(columns), DELTA) if deltas is None else deltas
    index = np.array([[columns.index(p["column_a"]), columns.index(p["column_b"])] for p in pairs])
    rng = np.random.default_rng(seed)
    shape = (n_studies, len(pairs))
    difference, se, p_value, df = np.empty(shape), np.empty(shape), np.empty(shape), np.empty(shape)
    for study in range(n_studies):
        y, scores, groups, folds = simulate_scores(rng, deltas, backbone_of)
        aucs, se[study], p_value[study], df[study] = stats.clustered_delong_tests(y, scores[index], groups, folds)
        difference[study] = aucs[:, 0] - aucs[:, 1]
    return verdicts(p_value, difference, se, df, ALPHA, MARGIN), pairs, p_value


def mc_se(rate: float, n: int) -> float:
    return float(np.sqrt(max(rate, ALPHA) * (1 - max(rate, ALPHA)) / n))


@lru_cache(maxsize=None)
def any_claim_rate(grid: str) -> tuple[float, int, float, float]:
    """Under the global null: the share of studies with any "different" claim, the comparisons, seconds taken,
    and the share with any raw p < alpha (no correction)."""
    start = time.perf_counter()
    decided, pairs, p_value = study_tests(grid, STUDIES[grid], seed=len(grid))
    return (float(decided["distinguishable"].any(axis=1).mean()), len(pairs), time.perf_counter() - start,
            float((p_value < ALPHA).any(axis=1).mean()))


@pytest.mark.parametrize("grid", ["demo", "paper"])
def test_no_comparison_is_called_different_under_the_global_null_beyond_alpha(grid):
    rate, n_comparisons, _, _ = any_claim_rate(grid)
    assert n_comparisons == {"demo": 12, "paper": 385}[grid]
    assert rate <= ALPHA + 2 * mc_se(rate, STUDIES[grid]), rate


def test_the_simulation_sees_the_multiplicity_that_holm_removes():
    """The same demo-grid p-values, each compared with alpha on its own, claim something far more often."""
    _, _, _, uncorrected = any_claim_rate("demo")
    assert uncorrected > 2 * ALPHA, uncorrected


@lru_cache(maxsize=None)
def power(gain: float, grid: str = "demo") -> tuple[float, float]:
    """vgg16 truly better by `gain` AUC at every strategy and classifier: the share of studies that call each
    of its backbone comparisons different (mean over them), and the true ΔAUC."""
    columns, backbone_of, pairs = grid_configs(grid)
    better = delta_for_auc(true_auc(DELTA) + gain)
    deltas = np.where(backbone_of == 0, better, DELTA)
    decided, _, _ = study_tests(grid, POWER_STUDIES, deltas, seed=3)
    real = [i for i, p in enumerate(pairs) if p["family"].startswith("backbone:")]
    return float(decided["distinguishable"][:, real].mean()), true_auc(better) - true_auc(DELTA)


def test_a_real_backbone_difference_is_found():
    rate, gain = power(0.20)
    assert gain == pytest.approx(0.20, abs=1e-6)
    assert rate > 0.5, rate


@lru_cache(maxsize=None)
def equivalence_rates(gain: float, shape: str, n_studies: int = 1000) -> tuple[float, float]:
    """One comparison (MLP vs SVM of one configuration) whose true ΔAUC is `gain`: the share of studies that
    claim it lies within ±margin (`within_margin`: verdict "equivalent", or "different, smaller than ±m"), and
    the share the textbook two one-sided tests at alpha each (the (1 − 2·alpha) interval) would."""
    deltas = np.array([delta_for_auc(true_auc(DELTA) + gain), DELTA])
    rng = np.random.default_rng([5, len(shape), int(1000 * (gain + 1))])
    difference, se, p_value, df = (np.empty(n_studies) for _ in range(4))
    for study in range(n_studies):
        y, scores, groups, folds = simulate_scores(rng, deltas, np.zeros(2, dtype=int), shape, EQUIVALENCE_OWN)
        aucs, se_, p_, df[study] = stats.clustered_delong_tests(y, scores[None], groups, folds)
        difference[study], se[study], p_value[study] = aucs[0, 0] - aucs[0, 1], se_[0], p_[0]
    one_per_study = (v[:, None] for v in (p_value, difference, se, df))  # each study its own Holm set of 1
    decided = verdicts(*one_per_study, ALPHA, MARGIN)
    return float(decided["within_margin"].mean()), float((decided["p_equivalent_holm"] < 2 * ALPHA).mean())


def equivalence_rate(gain: float, shape: str) -> float:
    return equivalence_rates(gain, shape)[0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sign", [1, -1])
def test_equivalent_is_claimed_at_most_alpha_when_the_true_difference_is_the_margin(sign, shape):
    rate = equivalence_rate(sign * MARGIN, shape)
    assert rate <= ALPHA + 2 * mc_se(rate, 1000), rate


def test_equivalence_is_found_where_the_data_can_show_it():
    """640 single images (BUSI-shaped), no true difference: "equivalent" is claimed in most studies — the
    bound above is not met by a test that never says "equivalent"."""
    assert equivalence_rate(0.0, "busi") > 0.5


def test_equivalence_is_claimed_when_the_difference_is_nil_and_the_interval_narrow():
    """Large clustered studies are not needed to see it: a tight, centred difference is called equivalent,
    a wide one inconclusive, and a distinguishable one different even when it lies inside the margin."""
    decided = verdicts(np.array([0.9, 0.9, 1e-6]), np.array([0.0, 0.0, 0.02]), np.array([0.01, 0.2, 0.003]),
                       np.full(3, 60.0), ALPHA, MARGIN)
    assert list(decided["verdict"]) == ["equivalent", "inconclusive", "different"]
    assert list(decided["within_margin"]) == [True, False, True]


def test_study_wide_holm_covers_every_dataset_and_family():
    """Two datasets, one tiny p each: adjusted over the four comparisons, not within each."""
    decided = verdicts(np.array([0.02, 0.5, 0.02, 0.5]), np.zeros(4), np.full(4, 0.1), np.full(4, 50.0), ALPHA,
                       MARGIN)
    assert decided["p_holm"] == pytest.approx([0.08, 1.0, 0.08, 1.0])
    assert not decided["distinguishable"].any()


DOC = Path(__file__).resolve().parents[1] / "docs" / "statistics.md"
MARKERS = ("<!-- study-simulation -->\n", "<!-- /study-simulation -->")


def study_table() -> str:
    """The simulated rates docs/statistics.md quotes, as the markdown its markers enclose."""
    lines = ["| simulation | studies | rate |", "|---|---|---|"]
    for name in GRIDS:
        rate, n, _, raw = any_claim_rate(name)
        lines.append(f"| global null, {name} grid ({n} comparisons): any *different* | "
                     f"{STUDIES[name]} | {rate:.3f} ± {mc_se(rate, STUDIES[name]):.3f} |")
        lines.append(f"| the same p-values, uncorrected (raw p < α) | {STUDIES[name]} | {raw:.3f} |")
    for gain in POWER_GAINS:
        rate, _ = power(gain)
        lines.append(f"| demo grid, vgg16 truly better by ΔAUC {gain:.2f}: its backbone comparisons called "
                     f"*different* | {POWER_STUDIES} | {rate:.3f} |")
    for shape in SHAPES:
        for gain in (MARGIN, -MARGIN, 0.0):
            rate, textbook = equivalence_rates(gain, shape)
            lines.append(f"| {shape}, one comparison, true ΔAUC {gain:+.2f}: *equivalent within ±{MARGIN:g}* "
                         f"(textbook TOST: {textbook:.3f}) | 1000 | {rate:.3f} |")
    return "\n".join(lines) + "\n"


def quoted_table() -> str:
    text = DOC.read_text()
    return text[text.index(MARKERS[0]) + len(MARKERS[0]):text.index(MARKERS[1])]


def test_docs_quote_these_simulated_rates():
    """docs/statistics.md's table is this simulation's output (the seeds fix it), not hand-typed."""
    assert quoted_table() == study_table()


if __name__ == "__main__":  # pragma: no cover - rewrites the table of docs/statistics.md
    text = DOC.read_text()
    DOC.write_text(text.replace(MARKERS[0] + quoted_table(), MARKERS[0] + study_table()))
    print(study_table())
    for name in GRIDS:
        print(f"{name} grid: {any_claim_rate(name)[2]:.1f} s")
