"""The DP solver against brute force: exact on separable problems, within 1% on general PSD quadratics."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from anna.solve import (
    InfeasibleBudget,
    Solution,
    min_bytes,
    objective,
    plan_bytes,
    solve,
    solve_front,
    solve_separable,
    solve_separable_front,
)
from anna.solve.dp import _grid


def brute_force(G: np.ndarray, sizes: np.ndarray, budget: int, base: int = 0,
                allowed: np.ndarray | None = None) -> float:
    """Least ``t^T G t`` over every plan that fits (``G`` (n*m, n*m) or separable (n, m))."""
    n, m = sizes.shape
    plans = np.indices((m,) * n).reshape(n, -1).T
    if G.shape == (n, m):
        value = G[np.arange(n), plans].sum(1)
    else:
        x = np.arange(n) * m + plans
        value = G[x[:, :, None], x[:, None, :]].sum((1, 2))
    ok = base + sizes[np.arange(n), plans].sum(1) <= budget
    if allowed is not None:
        ok &= allowed[np.arange(n), plans].all(1)
    return float(value[ok].min())


def instance(rng: np.random.Generator, n: int, m: int, full_rank: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Sizes in small integers (option 0, FP16, the largest); ``G = E E^T`` with zero FP16 rows; a random budget."""
    sizes = rng.integers(1, 20, (n, m))
    sizes[:, 0] = sizes.max(1) + rng.integers(0, 10, n)
    k = n * m
    E = rng.normal(size=(k, k if full_rank else 3)) * rng.gamma(1.0, 1.0, (k, 1))
    E[0::m] = 0.0
    budget = int(rng.integers(sizes.min(1).sum(), sizes.max(1).sum() + 1))
    return E @ E.T, sizes, budget


def random_allowed(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    allowed = rng.random((n, m)) < 0.8
    allowed[np.arange(n), rng.integers(0, m, n)] = True
    return allowed


def test_separable_dp_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, m = int(rng.integers(1, 8)), int(rng.integers(1, 5))
        G, sizes, _ = instance(rng, n, m)
        costs = np.diag(G).reshape(n, m) + rng.random((n, m))
        allowed = random_allowed(rng, n, m)
        base = int(rng.integers(0, 100))
        lo = min_bytes(sizes, base, allowed)
        budgets = sorted({lo, *map(int, rng.integers(lo, lo + sizes.max(1).sum() + 1, 3))})
        for sol in solve_separable_front(costs, sizes, budgets, base, allowed):
            assert sol.status == "optimal"
            assert allowed[np.arange(n), sol.choice].all()
            assert sol.bytes == plan_bytes(sizes, sol.choice, base) <= sol.budget
            assert sol.objective == pytest.approx(brute_force(costs, sizes, sol.budget, base, allowed), rel=1e-12)


def test_diagonal_quadratic_equals_brute_force() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        n, m = int(rng.integers(1, 8)), int(rng.integers(2, 5))
        G, sizes, budget = instance(rng, n, m)
        G = np.diag(np.diag(G))
        sol = solve(G, sizes, budget)
        assert sol.status == "optimal"
        assert sol.objective == pytest.approx(brute_force(G, sizes, budget), rel=1e-12, abs=1e-12)


def _gaps(seed: int, full_rank: bool, count: int = 200) -> np.ndarray:
    """Relative gaps to brute force on random PSD instances (n <= 8, m <= 4); the floor avoids dividing by ~0."""
    rng = np.random.default_rng(seed)
    gaps = []
    for _ in range(count):
        n, m = int(rng.integers(2, 9)), int(rng.integers(2, 5))
        G, sizes, budget = instance(rng, n, m, full_rank)
        sol = solve(G, sizes, budget)
        best = brute_force(G, sizes, budget)
        assert sol.bytes <= budget
        assert sol.objective == pytest.approx(objective(G, sol.choice), rel=1e-9)
        gaps.append((sol.objective - best) / max(best, 1e-3 * np.abs(np.diag(G)).max()))
    gaps = np.array(gaps)
    print(f"worst gap {gaps.max():.2e}, mean {gaps.mean():.2e}, over 1%: {(gaps > 0.01).sum()}", file=sys.stderr)
    assert gaps.min() > -1e-9
    return gaps


def test_general_psd_within_one_percent() -> None:
    """Full-rank ``G = E E^T``: the worst of 200 instances is within 1% of the optimum (all are exact today)."""
    assert _gaps(2, full_rank=True).max() <= 0.01


def test_low_rank_psd_mostly_within_one_percent() -> None:
    """Rank-3 ``G``: errors of units can cancel almost exactly, and the optimum then sits in a narrow basin that a
    local method misses. A known limit: 1 of these 200 instances is off by more than 1% of max(f*, 1e-3 max G_pp)."""
    gaps = _gaps(3, full_rank=False)
    assert (gaps > 0.01).sum() <= 1
    assert np.median(gaps) <= 1e-9


def test_option_zero_need_not_be_free() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        n, m = int(rng.integers(2, 7)), int(rng.integers(2, 4))
        _, sizes, budget = instance(rng, n, m)
        E = rng.normal(size=(n * m, n * m))
        G = E @ E.T
        sol = solve(G, sizes, budget)
        assert sol.objective <= 1.01 * brute_force(G, sizes, budget)


def test_infeasible_budget_reports_min_bytes() -> None:
    sizes = np.array([[10, 6, 4], [8, 5, 5], [20, 12, 9]])
    base = 100
    assert min_bytes(sizes, base) == 118
    G = np.eye(9)
    with pytest.raises(InfeasibleBudget) as err:
        solve(G, sizes, 117, base, reference_bytes=138)
    assert err.value.min_bytes == 118
    assert err.value.budget == 117
    assert f"{118 / 138:.6f}" in str(err.value)
    with pytest.raises(InfeasibleBudget):
        solve_separable_front(np.ones((3, 3)), sizes, [150, 117, 130], base)
    assert solve(G, sizes, 118, base).bytes == 118
    allowed = np.ones((3, 3), bool)
    allowed[2, 2] = False
    with pytest.raises(InfeasibleBudget) as err:
        solve(G, sizes, 118, base, allowed)
    assert err.value.min_bytes == 121


def test_front_is_monotone_and_in_input_order() -> None:
    rng = np.random.default_rng(4)
    for _ in range(20):
        G, sizes, _ = instance(rng, 8, 4)
        lo, hi = int(sizes.min(1).sum()), int(sizes.max(1).sum())
        budgets = list(rng.permutation(np.linspace(lo, hi, 9).astype(int)))
        front = solve_front(G, sizes, budgets)
        assert [s.budget for s in front] == budgets
        ordered = sorted(front, key=lambda s: s.budget)
        values = [s.objective for s in ordered]
        assert all(b <= a + 1e-9 * abs(a) for a, b in zip(values, values[1:], strict=False))
        assert ordered[-1].objective == pytest.approx(0.0, abs=1e-12)  # everything fits in FP16


def test_rounded_bins_stay_feasible_in_real_bytes() -> None:
    """Sizes that are no multiple of the bin width: rounded up in the DP, then polished in exact bytes."""
    rng = np.random.default_rng(5)
    worst = 0.0
    for trial in range(40):
        n, m = 7, 3
        sizes = rng.integers(1_000_003, 20_000_003, (n, m))
        sizes[:, 0] = sizes.max(1) + 7
        G = np.diag(rng.gamma(1.0, 1.0, n * m))
        G[0::m, 0::m] = 0.0
        base = 12_345
        budget = base + int(rng.integers(sizes.min(1).sum(), sizes.max(1).sum()))
        assert _grid(sizes, np.ones_like(sizes, bool), budget, 16).width > 1
        rough = solve_separable(np.diag(G).reshape(n, m), sizes, budget, base, bins=16)
        sol = solve(G, sizes, budget, base, bins=16)
        for s in (rough, sol):
            assert s.status == "feasible"
            assert s.bytes == plan_bytes(sizes, s.choice, base) <= budget
        best = brute_force(G, sizes, budget, base)
        assert sol.objective >= best - 1e-12
        worst = max(worst, (sol.objective - best) / best)
        if trial % 4:
            continue
        budgets = np.linspace(base + sizes.min(1).sum(), base + sizes.max(1).sum(), 6).astype(int).tolist()
        values = [s.objective for s in solve_separable_front(np.diag(G).reshape(n, m), sizes, budgets, base, bins=16)]
        assert all(b <= a for a, b in zip(values, values[1:], strict=False))
    assert worst <= 0.01


def test_grid_is_exact_on_small_problems() -> None:
    sizes = np.array([[40, 20, 10], [60, 30, 30], [100, 50, 20]])
    grid = _grid(sizes, np.ones_like(sizes, bool), 10_000, 4096)
    assert grid.width == 10 and grid.exact
    assert grid.steps("up").tolist() == grid.steps("nearest").tolist() == [[3, 1, 0], [3, 0, 0], [8, 3, 0]]
    coarse = _grid(sizes * 1_000_003 + 1, np.ones_like(sizes, bool), 10**12, 4)
    assert not coarse.exact and coarse.width > 1_000_003


def test_cross_terms_within_a_unit_do_not_matter() -> None:
    """Entries between two options of the same unit never count: the problem stays separable and exact."""
    rng = np.random.default_rng(6)
    n, m = 6, 3
    G, sizes, budget = instance(rng, n, m)
    D = np.zeros_like(G)
    for i in range(n):
        block = slice(i * m, (i + 1) * m)
        D[block, block] = G[block, block]
    sol = solve(D, sizes, budget)
    assert sol.status == "optimal"
    assert sol.objective == pytest.approx(brute_force(np.diag(D).reshape(n, m), sizes, budget))


def test_separable_call_path() -> None:
    rng = np.random.default_rng(7)
    costs = rng.random((5, 3))
    sizes = rng.integers(1, 9, (5, 3))
    budget = int(sizes.min(1).sum() + 6)
    a = solve(costs, sizes, budget)
    b = solve(costs.ravel(), sizes, budget)
    c = solve_separable(costs, sizes, budget)
    assert a.choice.tolist() == b.choice.tolist() == c.choice.tolist()
    assert a.objective == pytest.approx(brute_force(costs, sizes, budget))


def test_solution_fields_and_determinism() -> None:
    rng = np.random.default_rng(8)
    G, sizes, budget = instance(rng, 8, 4)
    a, b = solve(G, sizes, budget + 1000, 1000), solve(G, sizes, budget + 1000, 1000)
    assert isinstance(a, Solution)
    assert a.choice.shape == (8,) and a.choice.dtype == np.int64
    assert isinstance(a.bytes, int) and isinstance(a.budget, int) and a.budget == budget + 1000
    assert a.status in ("optimal", "feasible")
    assert a.choice.tolist() == b.choice.tolist() and a.objective == b.objective


def test_bad_inputs_are_rejected() -> None:
    sizes = np.array([[4, 2], [4, 2]])
    with pytest.raises(ValueError, match="integer"):
        solve(np.eye(4), sizes.astype(float), 8)
    with pytest.raises(ValueError, match="symmetric"):
        solve(np.triu(np.ones((4, 4))), sizes, 8)
    with pytest.raises(ValueError, match="shape"):
        solve(np.eye(3), sizes, 8)
    with pytest.raises(ValueError, match="no allowed option"):
        solve(np.eye(4), sizes, 8, allowed=np.array([[True, True], [False, False]]))
