"""The C search (svm/search.py): a seeded Optuna search is reproducible, and two processes share one study."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import optuna

from sonotune.svm.search import inner_folds, optuna_search_c, svm_pipeline
from tests.workspace import ROOT


def _synthetic_xy(seed=0, n=60, dim=12):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3 == 0
    x = rng.normal(size=(n, dim)) + 0.8 * y[:, None]
    return x, y.astype(int), np.arange(n) // 2


def test_seeded_optuna_gives_the_same_best_c_twice(tmp_path):
    x, y, groups = _synthetic_xy()
    found = []
    for attempt in range(2):
        result = optuna_search_c(svm_pipeline(), x, y, groups, inner_folds(3, 7), 1e-4, 100.0, 6, seed=7,
                                 storage=f"sqlite:///{tmp_path / f'study{attempt}.db'}", study_name="c")
        found.append((result.best_c, result.tried["C"].tolist()))
    assert found[0] == found[1]
    other = optuna_search_c(svm_pipeline(), x, y, groups, inner_folds(3, 7), 1e-4, 100.0, 6, seed=8,
                            storage=None, study_name="c")
    assert other.tried["C"].tolist() != found[0][1]  # the seed, not chance, made them equal


WORKER = textwrap.dedent("""
    import sys
    import numpy as np
    from sonotune.svm.search import inner_folds, optuna_search_c, svm_pipeline
    rng = np.random.default_rng(0)
    y = (np.arange(60) % 3 == 0).astype(int)
    x = rng.normal(size=(60, 12)) + 0.8 * y[:, None]
    optuna_search_c(svm_pipeline(), x, y, np.arange(60) // 2, inner_folds(3, 0), 1e-4, 100.0,
                    n_trials=int(sys.argv[2]), seed=int(sys.argv[3]), storage=sys.argv[1], study_name="shared")
""")


def test_two_processes_share_one_sqlite_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(storage=storage, study_name="shared", direction="maximize")  # as a team would, once
    env = {"PYTHONPATH": str(ROOT / "src") + ":" + str(ROOT), "PATH": "/usr/bin:/bin"}
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, storage, str(n), str(seed)], env=env,
                                stderr=subprocess.PIPE, text=True) for n, seed in ((5, 1), (4, 2))]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr.read()
    study = optuna.load_study(study_name="shared", storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(study.trials) == len(done) == 9


def test_a_balanced_svm_weighs_the_rare_class():
    from sonotune.svm.search import svm_pipeline

    assert svm_pipeline().named_steps["svc"].class_weight is None
    assert svm_pipeline("balanced").named_steps["svc"].class_weight == "balanced"
    rng = np.random.default_rng(0)
    y = (np.arange(400) % 5 == 0).astype(int)  # 20 % malignant, classes overlapping
    x = rng.normal(size=(400, 2)) + 0.7 * y[:, None]
    plain = svm_pipeline().fit(x, y).predict(x)
    balanced = svm_pipeline("balanced").fit(x, y).predict(x)
    sensitivity = [float(predicted[y == 1].mean()) for predicted in (plain, balanced)]
    assert sensitivity[1] > sensitivity[0] + 0.2  # the rare class is found far more often once it weighs the same


def _near_duplicates_with_opposite_labels(seed=0, pairs=40, dim=512, eps=0.01):
    """More columns than rows and pairs of near-identical rows of opposite class (re-crops of one lesion labelled
    differently): separable only by a tiny margin, where liblinear's dual solver runs out of iterations."""
    rng = np.random.default_rng(seed)
    base = np.maximum(rng.normal(size=(pairs, dim)), 0)
    x = np.vstack([base, base + eps * rng.normal(size=base.shape)])
    y = np.concatenate([np.arange(pairs) % 2, 1 - np.arange(pairs) % 2])
    return x, y, np.concatenate([np.arange(pairs), pairs + np.arange(pairs)])


def _convergence_warnings(model, x, y) -> int:
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    return sum(issubclass(w.category, ConvergenceWarning) for w in caught)


def test_the_svm_converges_where_liblinear_did_not_and_its_c_search_is_exact():
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from sonotune.svm.search import grid_search_c

    x, y, groups = _near_duplicates_with_opposite_labels()
    before = Pipeline([("scale", StandardScaler()), ("svc", LinearSVC(C=100.0, max_iter=20000, random_state=0))])
    assert _convergence_warnings(before, x, y) == 1  # the data the former solver failed on
    grid = [0.1, 1.0, 10.0, 100.0]
    assert sum(_convergence_warnings(svm_pipeline().set_params(svc__C=c), x, y) for c in grid) == 0
    cv = inner_folds(3, 0)
    search = grid_search_c(svm_pipeline(), x, y, groups, grid, cv)
    reference = grid_search_c(svm_pipeline().set_params(svc__tol=1e-8), x, y, groups, grid, cv)
    np.testing.assert_allclose(search.tried["inner_auc_mean"], reference.tried["inner_auc_mean"], atol=2e-3)
