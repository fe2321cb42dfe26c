"""Baselines: each does what its definition says, and none beats the (exact) solver on a separable problem."""

from __future__ import annotations

import numpy as np
import pytest

from anna.solve import InfeasibleBudget, fisher, greedy_diagonal, objective, random_plan, solve, uniform

# 3 units x 3 options (fp16, a, b). Diagonal errors; option b is smaller than a.
SIZES = np.array([[100, 60, 50], [200, 110, 100], [40, 25, 20]])
ERRORS = np.array([[0.0, 1.0, 3.0], [0.0, 0.5, 0.2], [0.0, 4.0, 5.0]])
G_DIAG = np.diag(ERRORS.ravel())


def test_uniform_picks_the_best_single_option_that_fits() -> None:
    # all-a: 195 bytes, error 5.5; all-b: 170 bytes, error 8.2.
    sol = uniform(G_DIAG, SIZES, 195)
    assert sol.choice.tolist() == [1, 1, 1]
    assert sol.objective == pytest.approx(5.5) and sol.bytes == 195 and sol.status == "feasible"
    assert uniform(G_DIAG, SIZES, 194).choice.tolist() == [2, 2, 2]
    roomy = uniform(G_DIAG, SIZES, 10_000)  # spare bytes stay unused: still uniform, still the best uniform plan
    assert roomy.choice.tolist() == [1, 1, 1] and roomy.bytes == 195
    with pytest.raises(InfeasibleBudget, match="uniform") as err:
        uniform(G_DIAG, SIZES, 169, reference_bytes=340)
    assert err.value.min_bytes == 170
    assert "0.500000" in str(err.value)


def test_uniform_skips_options_not_allowed_everywhere() -> None:
    allowed = np.ones((3, 3), bool)
    allowed[1, 1] = False
    assert uniform(G_DIAG, SIZES, 10_000, allowed=allowed).choice.tolist() == [2, 2, 2]


def test_greedy_keeps_the_most_sensitive_units_in_fp16() -> None:
    # Start: least-error quantized option per unit: [a, b, a] = 60 + 100 + 25 = 185 bytes, errors [1.0, 0.2, 4.0].
    # Sensitivity order: unit 2 (4.0), unit 0 (1.0), unit 1 (0.2).
    start = greedy_diagonal(G_DIAG, SIZES, 185)
    assert start.choice.tolist() == [1, 2, 1] and start.bytes == 185
    one = greedy_diagonal(G_DIAG, SIZES, 200)  # unit 2 -> fp16 (+15 = 200); unit 0 would need +40
    assert one.choice.tolist() == [1, 2, 0] and one.bytes == 200
    assert one.objective == pytest.approx(1.2)
    two = greedy_diagonal(G_DIAG, SIZES, 240)  # then unit 0 (+40 = 240)
    assert two.choice.tolist() == [0, 2, 0]
    # It stops at the first unit that does not fit: with 300 bytes, unit 1 (+100) would reach 340.
    assert greedy_diagonal(G_DIAG, SIZES, 300).choice.tolist() == [0, 2, 0]
    assert greedy_diagonal(G_DIAG, SIZES, 340).choice.tolist() == [0, 0, 0]
    with pytest.raises(InfeasibleBudget, match="greedy") as err:
        greedy_diagonal(G_DIAG, SIZES, 184)
    assert err.value.min_bytes == 185


def test_greedy_stops_at_the_first_unit_that_does_not_fit() -> None:
    sizes = np.array([[100, 10], [30, 10]])
    G = np.diag([0.0, 5.0, 0.0, 1.0])
    # unit 0 is the most sensitive but needs +90; the cheaper unit 1 is not tried after it.
    assert greedy_diagonal(G, sizes, 60).choice.tolist() == [1, 1]


def test_fisher_is_the_separable_dp_on_the_scores() -> None:
    scores = ERRORS[::-1].copy()  # deliberately wrong scores
    sol = fisher(scores, SIZES, 200)
    assert sol.status == "optimal"
    assert sol.objective == pytest.approx(scores[np.arange(3), sol.choice].sum())
    with_g = fisher(scores, SIZES, 200, G=G_DIAG)
    assert with_g.choice.tolist() == sol.choice.tolist()
    assert with_g.objective == pytest.approx(objective(G_DIAG, sol.choice))
    exact = fisher(ERRORS, SIZES, 200, G=G_DIAG)
    assert exact.objective == pytest.approx(solve(G_DIAG, SIZES, 200).objective)


def test_random_plan_is_feasible_and_reproducible() -> None:
    allowed = np.ones((3, 3), bool)
    allowed[0, 2] = False
    for seed in range(50):
        a = random_plan(SIZES, 250, np.random.default_rng(seed), allowed=allowed, G=G_DIAG)
        b = random_plan(SIZES, 250, np.random.default_rng(seed), allowed=allowed, G=G_DIAG)
        assert a.choice.tolist() == b.choice.tolist()
        assert 180 <= a.bytes <= 250
        assert allowed[np.arange(3), a.choice].all()
        assert a.objective == pytest.approx(objective(G_DIAG, a.choice))
    assert np.isnan(random_plan(SIZES, 250, np.random.default_rng(0)).objective)
    with pytest.raises(InfeasibleBudget):
        random_plan(SIZES, 169, np.random.default_rng(0))


def test_no_baseline_beats_the_exact_solver_on_diagonal_g() -> None:
    """With a diagonal G and exact bins the solver is optimal, so no baseline may be better."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        n, m = int(rng.integers(2, 9)), int(rng.integers(2, 5))
        sizes = rng.integers(1, 20, (n, m))
        sizes[:, 0] = sizes.max(1) + rng.integers(0, 10, n)
        errors = rng.gamma(1.0, 1.0, (n, m))
        errors[:, 0] = 0.0
        G = np.diag(errors.ravel())
        budget = int(rng.integers(sizes[:, 1:].max(1).sum(), sizes.max(1).sum() + 1))  # every baseline fits
        best = solve(G, sizes, budget)
        assert best.status == "optimal"
        plans = [
            uniform(G, sizes, budget),
            greedy_diagonal(G, sizes, budget),
            fisher(rng.random((n, m)), sizes, budget, G=G),
            random_plan(sizes, budget, rng, G=G),
        ]
        for plan in plans:
            assert plan.bytes <= budget
            assert plan.objective >= best.objective - 1e-12
