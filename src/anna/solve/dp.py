"""Choose one option per unit under a byte budget: dynamic programming over bytes, then local search. numpy only.

Problem: ``t[i, j] = 1`` when unit ``i`` uses option ``j`` (option 0 is FP16). Minimise ``t^T G t`` (``G`` symmetric
PSD, flat index ``i * m + j``) subject to ``base_bytes + sum_i sizes[i, choice_i] <= budget``.

Method:
1. Separable part: one DP table over (units x byte bins) serves every budget; each budget backtracks its own plan.
   Sizes are counted above each unit's smallest allowed option. The bin width is their gcd when ``span / gcd <=
   bins`` (then the DP is exact and the plan "optimal"), otherwise ``span / bins``. Each cell also carries its real
   bytes, and a budget only takes cells that fit in real bytes, so every plan is feasible. Inexact tables are built
   twice (sizes rounded up, and to the nearest bin) and both plans are polished by step 3 in exact bytes.
2. Cross terms: iterated linearisation. The marginal cost of ``(i, j)`` given the current plan ``c`` is
   ``G[ij, ij] + 2 * sum_{k != i} G[ij, k c_k]``; the DP is re-solved on it and a new plan is accepted only when the
   true quadratic drops. Starts: the DP on the diagonal, and the plan of the next smaller budget (so the front is
   monotone).
3. Polish: tabu search over single-unit option changes and pairwise changes that keep the budget in exact bytes,
   on the exact objective with incremental updates.
4. Restart from the convex relaxation (on problems up to ``RELAX_AUTO_LIMIT`` unit-options by default): a few
   Frank-Wolfe steps on ``t^T (G - D) t + d^T t`` (equal to the objective on binary plans; ``D`` a diagonal that
   keeps ``G - D`` PSD) with the DP as the linear oracle, the DP on the final gradient, then steps 2 and 3 again.
   Collective moves (many units whose cross terms cancel) that no single or pairwise change reaches come from here.

Modules: inputs, accounting and results in ``checks``; the byte-bin DP of step 1 in ``bins``; step 2 and the public
solvers here; the tabu search of step 3 in ``local_search``; the relaxation restart of step 4 in ``relax``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from anna.solve.bins import _dp_best, _dp_front, _grid
from anna.solve.checks import (
    InfeasibleBudget,
    Solution,
    _rooms,
    _solution,
    check_costs,
    check_gram,
    check_sizes,
    min_bytes,
    objective,
    plan_bytes,
    separable_costs,
)
from anna.solve.local_search import _Plan, _search
from anna.solve.relax import _diagonal_shift, _relax

__all__ = [  # the checks are re-exported: they lived here before the split
    "DEFAULT_BINS",
    "DEFAULT_MAX_ITERS",
    "DEFAULT_RELAX",
    "DEFAULT_SEARCH",
    "RELAX_AUTO_LIMIT",
    "InfeasibleBudget",
    "Solution",
    "check_costs",
    "check_gram",
    "check_sizes",
    "min_bytes",
    "objective",
    "plan_bytes",
    "separable_costs",
    "solve",
    "solve_front",
    "solve_separable",
    "solve_separable_front",
]

DEFAULT_BINS = 4096
DEFAULT_MAX_ITERS = 20
DEFAULT_SEARCH = 100
DEFAULT_RELAX = 15
RELAX_AUTO_LIMIT = 1000  # relax=None: the relaxation restart runs when n * m is at most this


def solve_separable_front(
    costs: np.ndarray,
    sizes: np.ndarray,
    budgets: Sequence[int],
    base_bytes: int = 0,
    allowed: np.ndarray | None = None,
    bins: int = DEFAULT_BINS,
    *,
    search: int = DEFAULT_SEARCH,
    reference_bytes: int | None = None,
    polish: bool = True,
) -> list[Solution]:
    """Minimise ``sum_i costs[i, choice_i]`` for every budget from one DP table.

    "optimal" when the bins are exact (sizes above each unit's smallest option are multiples of the bin width).
    Otherwise "feasible": the plans of the "nearest" and the "up" tables, and the plan of the next smaller budget
    (so the front is monotone), are polished by tabu search in exact bytes (``search`` steps without progress; 0 for
    plain descent) and the best one is kept.
    """
    sizes, allowed = check_sizes(sizes, allowed)
    costs = check_costs(costs, sizes.shape)
    rooms = _rooms(sizes, allowed, budgets, base_bytes, reference_bytes)
    grid = _grid(sizes, allowed, max(rooms), bins)
    if grid.exact:
        tables = [_dp_front(costs, grid, allowed, rooms)]
    else:
        tables = [_dp_front(costs, grid, allowed, rooms, r) for r in ("nearest", "up")]
    out: list[Solution | None] = [None] * len(rooms)
    prev: np.ndarray | None = None
    for k in sorted(range(len(rooms)), key=lambda k: rooms[k]):
        starts = [t[k] for t in tables if t[k] is not None] + ([prev] if prev is not None and not grid.exact else [])
        plans = [_Plan(None, costs, grid.extra, c) for c in starts]
        if not grid.exact and polish:
            plans = [_search(plan, allowed, rooms[k], search) for plan in plans]
        plan = min(plans, key=_Plan.value)
        prev = plan.choice
        status = "optimal" if grid.exact else "feasible"
        out[k] = _solution(status, plan.choice, plan.value(), sizes, base_bytes, budgets[k])
    return out  # type: ignore[return-value]


def solve_separable(costs: np.ndarray, sizes: np.ndarray, budget: int, base_bytes: int = 0,
                    allowed: np.ndarray | None = None, bins: int = DEFAULT_BINS, *, search: int = DEFAULT_SEARCH,
                    reference_bytes: int | None = None) -> Solution:
    """One budget of :func:`solve_separable_front`."""
    return solve_separable_front(costs, sizes, [budget], base_bytes, allowed, bins, search=search,
                                 reference_bytes=reference_bytes)[0]


def _has_cross_terms(G: np.ndarray, n: int, m: int) -> bool:
    blocks = G.reshape(n, m, n, m).copy()
    blocks[np.arange(n), :, np.arange(n), :] = 0.0
    return bool(np.any(blocks))


def _linearise(G: np.ndarray, plan: _Plan, allowed: np.ndarray, room: int, bins: int, max_iters: int) -> _Plan:
    """Re-solve the DP on the marginal costs at the current plan; keep a new plan only when the true value drops."""
    grid = _grid(plan.sizes, allowed, room, bins)
    value = plan.value()
    tol = 1e-12 * max(float(np.abs(np.diag(G)).max()), 1e-300)
    for _ in range(max_iters):
        choice = _dp_best(plan.linear_costs(), grid, allowed, [room])[0]
        if np.array_equal(choice, plan.choice):
            break
        cand = _Plan(G, plan.costs, plan.sizes, choice)
        cand_value = cand.value()
        if cand_value >= value - tol:
            break
        plan, value = cand, cand_value
    return plan



def solve_front(
    G: np.ndarray,
    sizes: np.ndarray,
    budgets: Sequence[int],
    base_bytes: int = 0,
    allowed: np.ndarray | None = None,
    *,
    max_iters: int = DEFAULT_MAX_ITERS,
    bins: int = DEFAULT_BINS,
    search: int = DEFAULT_SEARCH,
    relax: int | None = None,
    reference_bytes: int | None = None,
) -> list[Solution]:
    """Minimise ``t^T G t`` under every budget; plans come back in the order of ``budgets``.

    ``G`` may also be separable costs, shape (n, m) or (n*m,); then this is :func:`solve_separable_front`.
    Per budget (smallest first): linearised DP from the DP on the diagonal and from the plan of the next smaller
    budget (so the front is monotone), descent, tabu search (``search`` steps without progress), then a restart from
    the convex relaxation (``relax`` Frank-Wolfe steps, 0 to skip; ``None``: 15 when ``n * m <= 1000``, else 0 to
    keep a 374-unit front within about a second of CPU), kept when it ends lower.
    """
    sizes, allowed = check_sizes(sizes, allowed)
    n, m = sizes.shape
    costs = separable_costs(G, (n, m))
    if costs is not None:
        return solve_separable_front(costs, sizes, budgets, base_bytes, allowed, bins, search=search,
                                     reference_bytes=reference_bytes)
    G = check_gram(G, (n, m))
    diag = np.diag(G).reshape(n, m)
    if not _has_cross_terms(G, n, m):
        return solve_separable_front(diag, sizes, budgets, base_bytes, allowed, bins, search=search,
                                     reference_bytes=reference_bytes)
    rooms = _rooms(sizes, allowed, budgets, base_bytes, reference_bytes)
    if relax is None:
        relax = DEFAULT_RELAX if n * m <= RELAX_AUTO_LIMIT else 0
    grid = _grid(sizes, allowed, max(rooms), bins)
    starts = _dp_best(diag, grid, allowed, rooms)
    out: list[Solution | None] = [None] * len(rooms)
    prev: np.ndarray | None = None
    shift: np.ndarray | None = None
    for k in sorted(range(len(rooms)), key=lambda k: rooms[k]):
        plans = []
        for start in (starts[k], prev):
            if start is not None:
                plan = _linearise(G, _Plan(G, diag, grid.extra, start), allowed, rooms[k], bins, max_iters)
                plans.append(_search(plan, allowed, rooms[k], 0))
        plan = min(plans, key=_Plan.value)
        plan = _search(plan, allowed, rooms[k], search)
        if relax:
            shift = _diagonal_shift(G) if shift is None else shift
            alt = _Plan(G, diag, grid.extra, _relax(G, shift, plan, allowed, rooms[k], bins, relax))
            alt = _search(_linearise(G, alt, allowed, rooms[k], bins, max_iters), allowed, rooms[k], search)
            if alt.value() < plan.value():
                plan = alt
        prev = plan.choice.copy()
        value = objective(G, plan.choice)
        out[k] = _solution("feasible", plan.choice, value, sizes, base_bytes, budgets[k])
    return out  # type: ignore[return-value]


def solve(
    G: np.ndarray,
    sizes: np.ndarray,
    budget: int,
    base_bytes: int = 0,
    allowed: np.ndarray | None = None,
    *,
    max_iters: int = DEFAULT_MAX_ITERS,
    bins: int = DEFAULT_BINS,
    search: int = DEFAULT_SEARCH,
    relax: int | None = None,
    reference_bytes: int | None = None,
) -> Solution:
    """One budget of :func:`solve_front`."""
    return solve_front(G, sizes, [budget], base_bytes, allowed, max_iters=max_iters, bins=bins,
                       search=search, relax=relax, reference_bytes=reference_bytes)[0]
