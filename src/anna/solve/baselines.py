"""Baseline plans to compare the solver with, on the same arrays and budgets. numpy only.

Every baseline returns a :class:`~anna.solve.checks.Solution` with status "feasible" (none of them proves anything) and
``objective = t^T G t`` when ``G`` is given. ``G`` may also be separable costs of shape (n, m) or (n*m,).
"""

from __future__ import annotations

import numpy as np

from anna.solve.checks import (
    InfeasibleBudget,
    Solution,
    check_gram,
    check_sizes,
    min_bytes,
    objective,
    plan_bytes,
    separable_costs,
)
from anna.solve.dp import DEFAULT_BINS, solve_separable


def _evaluate(G: np.ndarray | None, choice: np.ndarray, shape: tuple[int, int]) -> float:
    """``t^T G t`` of a plan (or the sum of separable costs); NaN without ``G``."""
    if G is None:
        return float("nan")
    costs = separable_costs(G, shape)
    if costs is not None:
        return float(costs[np.arange(shape[0]), choice].sum())
    return objective(check_gram(G, shape), choice)


def _errors(G: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Per unit-option error of a unit alone: the diagonal of ``G`` as (n, m)."""
    costs = separable_costs(G, shape)
    return costs if costs is not None else np.diag(check_gram(G, shape)).reshape(shape).copy()


def _result(G: np.ndarray | None, choice: np.ndarray, sizes: np.ndarray, base: int, budget: int) -> Solution:
    choice = np.asarray(choice, np.int64)
    return Solution("feasible", choice, _evaluate(G, choice, sizes.shape), plan_bytes(sizes, choice, base), int(budget))


def uniform(G: np.ndarray, sizes: np.ndarray, budget: int, base_bytes: int = 0, allowed: np.ndarray | None = None, *,
            reference_bytes: int | None = None) -> Solution:
    """Every unit in the same non-FP16 option ``j >= 1``: among the options allowed for every unit whose uniform plan
    fits the budget, the one with the least objective (ties: fewer bytes, then the lower index). Spare bytes stay
    unused. Raises :class:`InfeasibleBudget` (with the smallest uniform plan's bytes) when none fits."""
    sizes, allowed = check_sizes(sizes, allowed)
    n, m = sizes.shape
    plans = [np.full(n, j) for j in range(1, m) if allowed[:, j].all()]
    if not plans:
        raise ValueError("no non-FP16 option is allowed for every unit: there is no uniform plan")
    totals = [plan_bytes(sizes, c, base_bytes) for c in plans]
    fits = [k for k, total in enumerate(totals) if total <= budget]
    if not fits:
        raise InfeasibleBudget(budget, min(totals), reference_bytes, what="uniform plan (one option for every unit)")
    best = min(fits, key=lambda k: (_evaluate(G, plans[k], (n, m)), totals[k], k))
    return _result(G, plans[best], sizes, base_bytes, budget)


def greedy_diagonal(G: np.ndarray, sizes: np.ndarray, budget: int, base_bytes: int = 0,
                    allowed: np.ndarray | None = None, *, reference_bytes: int | None = None) -> Solution:
    """Keep the most sensitive units in FP16, judged by the diagonal of ``G`` alone.

    1. ``err[i, j] = G[ij, ij]``, the error of unit i alone in option j.
    2. Start: every unit in its least-error quantized option ``q_i = argmin_{j >= 1, allowed} err[i, j]`` (ties:
       fewer bytes, then the lower index); a unit with no allowed quantized option stays in FP16.
    3. Sensitivity ``s_i = err[i, q_i]``. In order of decreasing ``s_i`` (ties: lower unit index), move unit i back
       to FP16 (when FP16 is allowed for it) while the total stays within the budget; stop at the first unit that
       would exceed it. Cross terms are ignored throughout.

    Raises :class:`InfeasibleBudget` when the starting plan of step 2 already exceeds the budget.
    """
    sizes, allowed = check_sizes(sizes, allowed)
    n, m = sizes.shape
    err = _errors(G, (n, m))
    choice = np.zeros(n, np.int64)
    for i in range(n):
        quant = [j for j in range(1, m) if allowed[i, j]]
        if quant:
            choice[i] = min(quant, key=lambda j: (err[i, j], sizes[i, j], j))
    total = plan_bytes(sizes, choice, base_bytes)
    if total > budget:
        raise InfeasibleBudget(budget, total, reference_bytes,
                               what="greedy starting plan (every unit in its least-error quantized option)")
    sensitivity = err[np.arange(n), choice]
    for i in sorted(range(n), key=lambda i: (-sensitivity[i], i)):
        if choice[i] == 0 or not allowed[i, 0]:
            continue
        grown = total + int(sizes[i, 0] - sizes[i, choice[i]])
        if grown > budget:
            break
        choice[i], total = 0, grown
    return _result(G, choice, sizes, base_bytes, budget)


def fisher(scores: np.ndarray, sizes: np.ndarray, budget: int, base_bytes: int = 0,
           allowed: np.ndarray | None = None, *, G: np.ndarray | None = None, bins: int = DEFAULT_BINS,
           reference_bytes: int | None = None) -> Solution:
    """The separable DP on given scores (n, m), e.g. Fisher-weighted weight perturbations computed elsewhere.

    Without ``G`` the solution is the DP's own (objective = sum of scores, status "optimal" when the bins are exact);
    with ``G`` the objective is the true ``t^T G t`` and the status "feasible".
    """
    sol = solve_separable(scores, sizes, budget, base_bytes, allowed, bins, reference_bytes=reference_bytes)
    if G is None:
        return sol
    sizes, _ = check_sizes(sizes, allowed)
    return _result(G, sol.choice, sizes, base_bytes, budget)


def random_plan(sizes: np.ndarray, budget: int, rng: np.random.Generator, base_bytes: int = 0,
                allowed: np.ndarray | None = None, *, G: np.ndarray | None = None,
                reference_bytes: int | None = None) -> Solution:
    """A random feasible plan that uses the budget: start with every unit in its smallest allowed option, then visit
    the units in random order and give each an option drawn uniformly among its allowed ones that still fit."""
    sizes, allowed = check_sizes(sizes, allowed)
    n, _ = sizes.shape
    floor = min_bytes(sizes, base_bytes, allowed)
    if budget < floor:
        raise InfeasibleBudget(budget, floor, reference_bytes)
    choice = np.where(allowed, sizes, np.iinfo(np.int64).max).argmin(1)
    total = floor
    for i in rng.permutation(n):
        grow = sizes[i] - sizes[i, choice[i]]
        options = np.flatnonzero(allowed[i] & (grow <= budget - total))
        j = int(rng.choice(options))
        total += int(grow[j])
        choice[i] = j
    return _result(G, choice, sizes, base_bytes, budget)
