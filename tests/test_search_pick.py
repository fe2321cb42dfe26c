"""The measured pick of `anna search`: measure only where the model is unsure, and take any measured plan that
fits and measures better, even one the model ranks worse."""

import numpy as np

from anna.analyze.error_model import ErrorModel
from anna.analyze.stage import Analysis
from anna.search import _pick_measured
from anna.solve.checks import Solution


def _analysis(diag: np.ndarray) -> Analysis:
    n, m = diag.shape
    sketches = np.sqrt(diag)[:, :, None].astype(np.float32) * 0  # no cross terms: predictions are the own MSEs
    em = ErrorModel([f"u{i}" for i in range(n)], ["fp16"] + [f"q{j}" for j in range(1, m)], diag, sketches, 1)
    sizes = np.tile(np.array([10, 5, 5]), (n, 1)).astype(np.int64)
    return Analysis("m", "c", em, sizes, base_bytes=0, total_bytes_fp16=10 * n)


def _sol(choice, em, budget):
    return Solution("optimal", np.array(choice), em.predict(np.array(choice)), 0, budget)


def test_pick_measures_near_best_only_and_takes_a_better_measured_plan():
    diag = np.array([[0.0, 1.0, 1.1], [0.0, 2.0, 9.0], [0.0, 3.0, 30.0]])
    analysis = _analysis(diag)
    em = analysis.error_model
    budgets = [15, 20]
    results = {
        "anna": [_sol([1, 1, 1], em, 15), _sol([1, 1, 0], em, 20)],
        "anna:own-only": [_sol([2, 1, 1], em, 15), _sol([1, 2, 0], em, 20)],  # 6.1 near 6.0; 13 far from 3
    }
    truth = {(1, 1, 1): 6.0, (2, 1, 1): 5.0, (1, 2, 0): 4.0, (1, 1, 0): 3.5, (2, 2, 2): 0.5}
    calls = []

    def measured(choice):
        calls.append(tuple(int(c) for c in choice))
        return truth[tuple(int(c) for c in choice)]

    # a baseline plan measured earlier: all options q2, 15 bytes, measuring far better than the model predicts
    known = {(2, 2, 2): 0.5}
    sources = _pick_measured(results, budgets, measured, analysis, polish=0, known=known, margin=0.05)
    assert [tuple(int(c) for c in s.choice) for s in results["anna"]] == [(2, 2, 2), (2, 2, 2)]
    assert sources[0] == "measured plan"  # at 20 bytes the same plan also comes as the smaller budget's
    assert (1, 2, 0) not in calls  # predicted 11.0 against 3.0: never measured

    # without the known plan: (2, 1, 1), within 5% of the best prediction, is measured and wins at 15 bytes
    results["anna"] = [_sol([1, 1, 1], em, 15), _sol([1, 1, 0], em, 20)]
    calls.clear()
    sources = _pick_measured(results, budgets, measured, analysis, polish=0, known={}, margin=0.05)
    assert tuple(int(c) for c in results["anna"][0].choice) == (2, 1, 1) and sources[0] == "anna:own-only"
    assert tuple(int(c) for c in results["anna"][1].choice) == (1, 1, 0)
    assert (1, 2, 0) not in calls
