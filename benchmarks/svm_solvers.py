"""Which linear-SVM solver the FT-SVM should use: convergence warnings, exactness and time of the C search.

Run from the repository root after `make demo` (or on any workspace whose finetune stages ran):
`python benchmarks/svm_solvers.py [--workspace DIR]`. For every `runs/D/B/S/mlp/features.npz` there and every outer
fold, it runs the svm stage's C search (leakage-free protocol: the fold's training rows, params.yaml's C grid and
grouped inner folds) with each candidate solver, and scores every C by its mean inner-fold ROC AUC, fitting fold by
fold here so that each fit's ConvergenceWarning is counted. The chosen solver is compared with its objective solved
to a tight tolerance (its reference): the largest AUC difference over every (configuration, fold, C), and how often
the chosen C differs (liblinear's objective, squared hinge with a penalised intercept, has no reference here: its
primal solver at a tight tolerance takes up to minutes per fit). Seconds are the candidates' fits, all timed in
this one run (ratios to the chosen solver).

It writes `docs/svm_solvers.json` and renders the manual's table (docs/manual.md, between the `svm-solvers`
markers) from it; tests/svm/test_solver_table.py keeps the two equal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "docs" / "svm_solvers.json"
MANUAL = ROOT / "docs" / "manual.md"
MARKERS = ("<!-- svm-solvers -->\n", "<!-- /svm-solvers -->")
CHOSEN = "libsvm"


def _scaled(svc, rotate: bool = False) -> Pipeline:
    steps = [("scale", StandardScaler())] + ([("span", PCA(svd_solver="full"))] if rotate else [])
    return Pipeline(steps + [("svc", svc)])


# name: (what it is, the candidate, its objective solved tightly: None where that is too slow to measure — liblinear's
# primal solver at tol 1e-6 took 20 s for one fit of the demo's VGG16 features at C = 100, on 2 cores)
SOLVERS = {
    "liblinear": ("LinearSVC, liblinear dual, max_iter 20 000 (before)",
                  _scaled(LinearSVC(max_iter=20_000, random_state=42)), None),
    "pca_liblinear": ("PCA → LinearSVC dual, max_iter 400 000 (branch wt-ui2)",
                      _scaled(LinearSVC(max_iter=400_000, random_state=42), rotate=True), None),
    CHOSEN: ("SVC(kernel='linear'), libsvm (now: `svm_pipeline`)",
             _scaled(SVC(kernel="linear")),
             _scaled(SVC(kernel="linear", tol=1e-8))),
}


def inner_aucs(estimator: Pipeline, c_grid, x, y, splits) -> tuple[np.ndarray, int, float]:
    """Mean inner-fold ROC AUC per C (what GridSearchCV scores), the ConvergenceWarnings raised, the seconds."""
    aucs, warned, seconds = np.zeros(len(c_grid)), 0, 0.0
    for i, c in enumerate(c_grid):
        per_fold = []
        for fit, held_out in splits:
            model = clone(estimator).set_params(svc__C=c)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ConvergenceWarning)
                start = time.perf_counter()
                model.fit(x[fit], y[fit])
                seconds += time.perf_counter() - start
            warned += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
            per_fold.append(roc_auc_score(y[held_out], model.decision_function(x[held_out])))
        aucs[i] = np.mean(per_fold)
    return aucs, warned, seconds


def outer_folds(workspace: Path, layer: str):
    """(configuration, fold, training features, labels, groups) for every finetuned configuration of `workspace`."""
    from sonotune.stages.svm import load_finetuned

    cwd = os.getcwd()
    os.chdir(workspace)  # the stage reads runs/ relative to the workspace
    try:
        for source in sorted(Path("runs").glob("*/*/*/mlp/features.npz")):
            dataset, backbone, strategy = source.parts[1:4]
            data = load_finetuned(dataset, backbone, int(strategy), layer)
            rows = data.rows
            for (_, fold), features in sorted(data.features.items()):
                train = (rows["fold"] != fold).to_numpy()
                yield (f"{dataset}/{backbone}/{strategy}", fold, features[train], rows["y"].to_numpy()[train],
                       rows["group"].to_numpy()[train])
    finally:
        os.chdir(cwd)


def measure(workspace: Path, solvers: list[str]) -> dict:
    from sonotune.config import load_params
    from sonotune.svm.search import inner_folds

    params = load_params(ROOT / "params.yaml")  # this checkout's C grid, inner folds and seed
    cfg, c_grid = params.svm, list(params.svm.c_grid)
    totals = {name: {"fits": 0, "warnings": 0, "seconds": 0.0, "max_auc_diff": None, "best_c_differs": None}
              for name in solvers}
    folds, mean_auc = 0, {name: np.zeros(len(c_grid)) for name in solvers}
    for config, fold, x, y, groups in outer_folds(workspace, cfg.features):
        splits = list(inner_folds(cfg.inner_splits, params.seed).split(x, y, groups))
        folds += 1
        for name in solvers:
            _, candidate, reference = SOLVERS[name]
            got, warned, seconds = inner_aucs(candidate, c_grid, x, y, splits)
            total = totals[name]
            total["fits"] += len(c_grid) * len(splits)
            total["warnings"] += warned
            total["seconds"] += seconds
            mean_auc[name] += got
            if reference is not None:
                exact = inner_aucs(reference, c_grid, x, y, splits)[0]
                total["max_auc_diff"] = max(total["max_auc_diff"] or 0.0, float(np.abs(got - exact).max()))
                differs = int(c_grid[int(np.argmax(got))] != c_grid[int(np.argmax(exact))])
                total["best_c_differs"] = (total["best_c_differs"] or 0) + differs
        print(f"{config} fold {fold}: " + ", ".join(f"{n} {totals[n]['seconds']:.1f} s" for n in solvers), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=workspace, capture_output=True,
                            text=True).stdout.strip()
    return {
        "workspace_commit": commit, "outer_folds": folds, "c_grid": c_grid, "inner_splits": cfg.inner_splits,
        "features": cfg.features,
        "solvers": {name: {"label": SOLVERS[name][0], **totals[name],
                           "seconds_ratio": totals[name]["seconds"] / totals[CHOSEN]["seconds"],
                           "mean_inner_auc_per_c": list(mean_auc[name] / folds)} for name in solvers},
    }


def render_table(result: dict) -> str:
    """The manual's table, from `docs/svm_solvers.json`."""
    c_grid = result["c_grid"]
    lines = [f"| solver | ConvergenceWarnings (of fits) | max \\|ΔAUC\\| vs tight reference | best C ≠ reference "
             f"(of {result['outer_folds']} folds) | seconds | × libsvm | "
             + " | ".join(f"mean inner AUC, C={c:g}" for c in c_grid) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(c_grid)]
    for solver in result["solvers"].values():
        exact = "not measured" if solver["max_auc_diff"] is None else f"{solver['max_auc_diff']:.4f}"
        differs = "—" if solver["best_c_differs"] is None else solver["best_c_differs"]
        lines.append(f"| {solver['label']} | {solver['warnings']} (of {solver['fits']}) | {exact} "
                     f"| {differs} | {solver['seconds']:.1f} | {solver['seconds_ratio']:.1f} | "
                     + " | ".join(f"{auc:.3f}" for auc in solver["mean_inner_auc_per_c"]) + " |")
    return "\n".join(lines) + "\n"


def _table_span(text: str) -> tuple[int, int]:
    return text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])


def quoted_table(text: str) -> str:
    start, end = _table_span(text)
    return text[start:end]


def write_manual_table(result: dict) -> None:
    text = MANUAL.read_text()
    start, end = _table_span(text)
    MANUAL.write_text(text[:start] + render_table(result) + text[end:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=ROOT, help="a workspace whose finetune stages ran")
    parser.add_argument("--solvers", nargs="+", choices=list(SOLVERS), default=list(SOLVERS))
    args = parser.parse_args()
    result = measure(args.workspace.resolve(), sorted(set(args.solvers) | {CHOSEN}, key=list(SOLVERS).index))
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    write_manual_table(result)
    print(render_table(result))


if __name__ == "__main__":
    sys.exit(main())
