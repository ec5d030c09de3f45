"""No hand-typed results: the manual's FT-SVM solver table is rendered from docs/svm_solvers.json, which
benchmarks/svm_solvers.py writes from a demo's features; and what it says of the chosen solver holds there."""

from __future__ import annotations

import importlib.util
import json

from tests.workspace import ROOT


def _benchmark():
    spec = importlib.util.spec_from_file_location("svm_solvers", ROOT / "benchmarks" / "svm_solvers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_manuals_table_is_the_benchmarks_file():
    benchmark = _benchmark()
    result = json.loads(benchmark.RESULT.read_text())
    assert benchmark.quoted_table(benchmark.MANUAL.read_text()) == benchmark.render_table(result)


def test_the_chosen_solver_was_quiet_exact_and_fastest_on_the_demo():
    benchmark = _benchmark()
    solvers = json.loads(benchmark.RESULT.read_text())["solvers"]
    chosen = solvers[benchmark.CHOSEN]
    assert chosen["warnings"] == 0 and chosen["best_c_differs"] == 0 and chosen["max_auc_diff"] < 0.005
    assert solvers["liblinear"]["warnings"] > 0  # the warnings the change removes
    assert all(solver["seconds_ratio"] >= 1.0 for solver in solvers.values())
