"""Choose one option per unit under a byte budget: dynamic programming over bytes, then local search. numpy only.

Problem: ``t[i, j] = 1`` when unit ``i`` uses option ``j`` (option 0 is FP16). Minimise ``t^T G t`` (``G`` symmetric
PSD, flat index ``i * m + j``) subject to ``base_bytes + sum_i sizes[i, choice_i] <= budget``.

Method:
1. Separable part: one DP table over (units x byte bins) serves every budget; each budget backtracks its own plan.
   Sizes are counted above each unit's smallest option and rounded *up* to the bin width, so every plan fits in real
   bytes. The bin width is the gcd of those sizes when the table stays small (then the DP is exact), otherwise
   ``span / bins``.
2. Cross terms: iterated linearisation. The marginal cost of ``(i, j)`` given the current plan ``c`` is
   ``G[ij, ij] + 2 * sum_{k != i} G[ij, k c_k]``; the DP is re-solved on it and a new plan is accepted only when the
   true quadratic drops.
3. Polish in exact bytes: single-unit option changes and pairwise changes that keep the budget, evaluated on the
   exact objective with incremental updates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 4096
DEFAULT_MAX_ITERS = 20
DEFAULT_SEARCH = 100
_PAIR_ALL = 400
_PAIR_SIDE = 40
_MAX_STEPS = 100_000
_BIG = np.iinfo(np.int64).max


@dataclass(frozen=True, eq=False)
class Solution:
    """One plan: ``choice[i]`` is unit ``i``'s option; ``bytes`` includes the base bytes."""

    status: str  # "optimal" (proven) or "feasible"
    choice: np.ndarray
    objective: float
    bytes: int
    budget: int


class InfeasibleBudget(ValueError):
    """The budget is below the smallest achievable size."""

    def __init__(self, budget: int, min_bytes: int, reference_bytes: int | None = None, what: str = "plan") -> None:
        self.budget = int(budget)
        self.min_bytes = int(min_bytes)
        self.reference_bytes = reference_bytes
        msg = f"budget of {self.budget} bytes is below the smallest {what}: {self.min_bytes} bytes"
        if reference_bytes:
            msg += (
                f" (requested size ratio {self.budget / reference_bytes:.6f},"
                f" smallest feasible ratio {self.min_bytes / reference_bytes:.6f})"
            )
        super().__init__(msg)


# ---------------------------------------------------------------------------------------------------------- inputs


def check_sizes(sizes: np.ndarray, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``sizes`` (n, m) integer bytes and the ``allowed`` mask; return them as int64 and bool arrays."""
    sizes = np.asarray(sizes)
    if sizes.ndim != 2 or sizes.shape[0] == 0 or sizes.shape[1] == 0:
        raise ValueError(f"sizes must be a non-empty (n_units, n_options) array, got shape {sizes.shape}")
    if not np.issubdtype(sizes.dtype, np.integer):
        raise ValueError(f"sizes must be integer bytes, got dtype {sizes.dtype}")
    sizes = sizes.astype(np.int64)
    if (sizes < 0).any():
        raise ValueError("sizes must be non-negative")
    allowed = np.ones(sizes.shape, bool) if allowed is None else np.asarray(allowed, bool)
    if allowed.shape != sizes.shape:
        raise ValueError(f"allowed has shape {allowed.shape}, sizes has {sizes.shape}")
    empty = np.flatnonzero(~allowed.any(1))
    if empty.size:
        raise ValueError(f"units {empty.tolist()} have no allowed option")
    return sizes, allowed


def check_costs(costs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Validate separable costs: an (n, m) or flat (n*m,) array of finite floats."""
    costs = np.asarray(costs, np.float64)
    if costs.size != shape[0] * shape[1] or costs.ndim not in (1, 2) or (costs.ndim == 2 and costs.shape != shape):
        raise ValueError(f"costs must have shape {shape} or ({shape[0] * shape[1]},), got {costs.shape}")
    costs = costs.reshape(shape)
    if not np.isfinite(costs).all():
        raise ValueError("costs must be finite")
    return costs


def check_gram(G: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Validate the quadratic form: (n*m, n*m), finite, symmetric."""
    G = np.asarray(G, np.float64)
    k = shape[0] * shape[1]
    if G.shape != (k, k):
        raise ValueError(f"G must have shape ({k}, {k}) for {shape[0]} units x {shape[1]} options, got {G.shape}")
    if not np.isfinite(G).all():
        raise ValueError("G must be finite")
    if not np.allclose(G, G.T, rtol=1e-8, atol=1e-12 * max(1.0, float(np.abs(G).max()))):
        raise ValueError("G must be symmetric")
    return G


def min_bytes(sizes: np.ndarray, base_bytes: int = 0, allowed: np.ndarray | None = None) -> int:
    """Smallest achievable total: base plus every unit in its smallest allowed option."""
    sizes, allowed = check_sizes(sizes, allowed)
    return int(base_bytes) + int(np.where(allowed, sizes, _BIG).min(1).sum())


def plan_bytes(sizes: np.ndarray, choice: np.ndarray, base_bytes: int = 0) -> int:
    """Total bytes of a plan, base included."""
    return int(base_bytes) + int(np.asarray(sizes, np.int64)[np.arange(len(choice)), choice].sum())


def objective(G: np.ndarray, choice: np.ndarray) -> float:
    """The true quadratic ``t^T G t`` of a plan; ``G`` is (n*m, n*m)."""
    n = len(choice)
    x = np.arange(n) * (G.shape[0] // n) + np.asarray(choice)
    return float(G[np.ix_(x, x)].sum())


def _rooms(sizes: np.ndarray, allowed: np.ndarray, budgets: Sequence[int], base_bytes: int,
           reference_bytes: int | None) -> list[int]:
    """Per budget, the bytes available above the all-smallest plan; raises InfeasibleBudget."""
    floor = min_bytes(sizes, base_bytes, allowed)
    budgets = [int(b) for b in budgets]
    if not budgets:
        raise ValueError("no budgets given")
    low = min(budgets)
    if low < floor:
        raise InfeasibleBudget(low, floor, reference_bytes)
    return [b - floor for b in budgets]


# ------------------------------------------------------------------------------------------------------------- DP


@dataclass(frozen=True)
class _Grid:
    """Discretised sizes: ``steps[i, j]`` bins above unit i's smallest allowed option (rounded up)."""

    width: int
    steps: np.ndarray
    exact: bool

    def capacity(self, room: int) -> int:
        return room // self.width


def _grid(sizes: np.ndarray, allowed: np.ndarray, room: int, bins: int) -> _Grid:
    """Bin width: gcd of the extra sizes when ``span / gcd <= bins`` (exact), else the span over ``bins``."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    floor = np.where(allowed, sizes, _BIG).min(1)
    extra = np.where(allowed, sizes - floor[:, None], 0)
    g = int(np.gcd.reduce(extra.ravel()))
    span = min(int(room), int(extra.max(1).sum()))
    width = 1 if g == 0 else g * max(1, -(-span // (g * bins)))
    steps = -(-extra // width)
    return _Grid(width, steps, bool((extra % width == 0).all()))


def _dp_front(costs: np.ndarray, grid: _Grid, allowed: np.ndarray, capacities: Sequence[int]) -> list[np.ndarray]:
    """Min-cost plans for every capacity (in bins) from one table: ``best[b]`` = min cost using exactly b bins."""
    n, m = costs.shape
    top = max(int(c) for c in capacities)
    top = min(top, int(grid.steps.max(1).sum()))
    best = np.full(top + 1, np.inf)
    best[0] = 0.0
    arg = np.empty((n, top + 1), np.int16)
    for i in range(n):
        new = np.full(top + 1, np.inf)
        pick = np.full(top + 1, -1, np.int16)
        for j in np.flatnonzero(allowed[i]):
            s = int(grid.steps[i, j])
            if s > top:
                continue
            cand = best[: top + 1 - s] + costs[i, j]
            better = cand < new[s:]
            new[s:][better] = cand[better]
            pick[s:][better] = j
        best = new
        arg[i] = pick
    plans = []
    for cap in capacities:
        b = int(np.argmin(best[: min(int(cap), top) + 1]))
        choice = np.empty(n, np.int64)
        for i in range(n - 1, -1, -1):
            choice[i] = arg[i, b]
            b -= int(grid.steps[i, choice[i]])
        plans.append(choice)
    return plans


# --------------------------------------------------------------------------------------------------- local search


class _Plan:
    """A plan with incremental bookkeeping of the exact objective: quadratic ``G`` or separable ``costs``."""

    def __init__(self, G: np.ndarray | None, costs: np.ndarray, sizes: np.ndarray, choice: np.ndarray) -> None:
        self.G, self.costs, self.sizes = G, costs, sizes
        self.n, self.m = sizes.shape
        self.choice = np.array(choice, np.int64)
        self.x = np.arange(self.n) * self.m + self.choice
        self.h = G[:, self.x].sum(1) if G is not None else None
        self.used = int(sizes[np.arange(self.n), self.choice].sum())

    def value(self) -> float:
        if self.G is None:
            return float(self.costs[np.arange(self.n), self.choice].sum())
        return float(self.G[np.ix_(self.x, self.x)].sum())

    def deltas(self) -> np.ndarray:
        """Exact objective change of moving each unit alone to each option, flat (n*m,)."""
        own = np.repeat(self.x, self.m)
        if self.G is None:
            flat = self.costs.ravel()
            return flat - flat[own]
        G, h, idx = self.G, self.h, np.arange(self.n * self.m)
        return G[idx, idx] - 2.0 * G[idx, own] + G[own, own] + 2.0 * (h - h[own])

    def linear_costs(self) -> np.ndarray:
        """Marginal costs ``G[p, p] + 2 * sum_{k != unit(p)} G[p, x_k]`` given this plan, (n, m)."""
        idx = np.arange(self.n * self.m)
        own = np.repeat(self.x, self.m)
        return (self.G[idx, idx] + 2.0 * (self.h - self.G[idx, own])).reshape(self.n, self.m)

    def cross(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Interaction of two moves (to ``rows`` and to ``cols``): the pair delta is ``d[p] + d[q] + 2 cross``."""
        own = np.repeat(self.x, self.m)
        a, b = own[rows], own[cols]
        G = self.G
        return G[np.ix_(rows, cols)] - G[np.ix_(rows, b)] - G[np.ix_(a, cols)] + G[np.ix_(a, b)]

    def move(self, i: int, j: int) -> None:
        old, new = self.x[i], i * self.m + j
        if self.G is not None:
            self.h += self.G[:, new] - self.G[:, old]
        self.used += int(self.sizes[i, j] - self.sizes[i, self.choice[i]])
        self.choice[i], self.x[i] = j, new


def _pair_candidates(d: np.ndarray, grow: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Moves worth pairing: all of them on small problems, else the best byte-freeing and byte-using ones."""
    idx = np.flatnonzero(ok)
    if idx.size <= _PAIR_ALL:
        return idx
    picks = []
    for side in (grow[idx] <= 0, grow[idx] > 0):
        sub = idx[side]
        if sub.size > _PAIR_SIDE:
            sub = sub[np.argpartition(d[sub], _PAIR_SIDE)[:_PAIR_SIDE]]
        picks.append(sub)
    return np.concatenate(picks)


def _search(plan: _Plan, allowed: np.ndarray, room: int, iters: int) -> _Plan:
    """Tabu search over single and pairwise option changes that keep ``used <= room`` (exact bytes).

    Each step takes the best admissible move, improving or not (steepest descent until a local optimum, then it
    climbs out). A changed unit may not change again for ``tenure`` steps unless that reaches a new best. Stops
    after ``iters`` steps without a new best; returns the best plan seen.
    """
    n, m = plan.n, plan.m
    flat_sizes, ok_all = plan.sizes.ravel(), allowed.ravel()
    unit = np.repeat(np.arange(n), m)
    scale = float(np.abs(plan.costs).max()) if plan.G is None else float(np.abs(np.diag(plan.G)).max())
    tol = 1e-12 * max(scale, 1e-300)
    tenure = int(np.clip(n // 4, 1, 20))
    free_at = np.zeros(n, np.int64)
    value = plan.value()
    best_value, best_choice = value, plan.choice.copy()
    step, last_best = 0, 0
    while step - last_best <= iters and step < _MAX_STEPS:
        slack = room - plan.used
        d = plan.deltas()
        grow = flat_sizes - np.repeat(flat_sizes[plan.x], m)
        ok = ok_all.copy()
        ok[plan.x] = False
        aspire = value + d < best_value - tol
        tabu = free_at[unit] > step
        single = np.where(ok & (grow <= slack) & (~tabu | aspire), d, np.inf)
        p = int(np.argmin(single))
        move, delta = [p], float(single[p])
        if n > 1 and delta >= -tol:
            c = _pair_candidates(d, grow, ok)
            tot = d[c, None] + d[None, c]
            if plan.G is not None:
                tot = tot + 2.0 * plan.cross(c, c)
            bad = (unit[c, None] >= unit[None, c]) | (grow[c, None] + grow[None, c] > slack)
            bad |= (tabu[c, None] | tabu[None, c]) & ~(value + tot < best_value - tol)
            tot[bad] = np.inf
            k = int(np.argmin(tot)) if tot.size else 0
            if tot.size and tot.flat[k] < delta:
                move, delta = [int(c[k // c.size]), int(c[k % c.size])], float(tot.flat[k])
        if not np.isfinite(delta):
            break
        for q in move:
            plan.move(q // m, q % m)
            free_at[q // m] = step + 1 + tenure
        if plan.used > room:  # cannot happen: moves are checked in exact bytes
            raise AssertionError("search left the budget")
        value += delta
        step += 1
        if value < best_value - tol:
            best_value, best_choice, last_best = value, plan.choice.copy(), step
    return _Plan(plan.G, plan.costs, plan.sizes, best_choice)


# -------------------------------------------------------------------------------------------------------- solvers


def _solution(status: str, choice: np.ndarray, value: float, sizes: np.ndarray, base: int, budget: int) -> Solution:
    return Solution(status, np.asarray(choice, np.int64), float(value), plan_bytes(sizes, choice, base), int(budget))


def solve_separable_front(
    costs: np.ndarray,
    sizes: np.ndarray,
    budgets: Sequence[int],
    base_bytes: int = 0,
    allowed: np.ndarray | None = None,
    bins: int = DEFAULT_BINS,
    *,
    reference_bytes: int | None = None,
    polish: bool = True,
) -> list[Solution]:
    """Minimise ``sum_i costs[i, choice_i]`` for every budget from one DP table.

    "optimal" when the bins are exact (sizes above each unit's smallest option are multiples of the bin width),
    otherwise "feasible": sizes were rounded up, then the plan is polished by local search in exact bytes.
    """
    sizes, allowed = check_sizes(sizes, allowed)
    costs = check_costs(costs, sizes.shape)
    rooms = _rooms(sizes, allowed, budgets, base_bytes, reference_bytes)
    floor_sizes = np.where(allowed, sizes, _BIG).min(1)
    grid = _grid(sizes, allowed, max(rooms), bins)
    plans = _dp_front(costs, grid, allowed, [grid.capacity(r) for r in rooms])
    out = []
    for budget, room, choice in zip(budgets, rooms, plans, strict=True):
        plan = _Plan(None, costs, sizes - floor_sizes[:, None], choice)
        if not grid.exact and polish:
            plan = _search(plan, allowed, room, 0)
        status = "optimal" if grid.exact else "feasible"
        out.append(_solution(status, plan.choice, plan.value(), sizes, base_bytes, budget))
    return out


def solve_separable(costs: np.ndarray, sizes: np.ndarray, budget: int, base_bytes: int = 0,
                    allowed: np.ndarray | None = None, bins: int = DEFAULT_BINS, *,
                    reference_bytes: int | None = None) -> Solution:
    """One budget of :func:`solve_separable_front`."""
    return solve_separable_front(costs, sizes, [budget], base_bytes, allowed, bins, reference_bytes=reference_bytes)[0]


def _has_cross_terms(G: np.ndarray, n: int, m: int) -> bool:
    blocks = G.reshape(n, m, n, m).copy()
    blocks[np.arange(n), :, np.arange(n), :] = 0.0
    return bool(np.any(blocks))


def _linearise(G: np.ndarray, plan: _Plan, sizes: np.ndarray, allowed: np.ndarray, room: int, bins: int,
               max_iters: int) -> _Plan:
    """Re-solve the DP on the marginal costs at the current plan; keep a new plan only when the true value drops."""
    grid = _grid(sizes, allowed, room, bins)
    value = plan.value()
    tol = 1e-12 * max(float(np.abs(np.diag(G)).max()), 1e-300)
    for _ in range(max_iters):
        choice = _dp_front(plan.linear_costs(), grid, allowed, [grid.capacity(room)])[0]
        if np.array_equal(choice, plan.choice):
            break
        cand = _Plan(G, plan.costs, plan.sizes, choice)
        cand_value = cand.value()
        if cand_value >= value - tol:
            break
        plan, value = cand, cand_value
    return plan


def _separable_view(G: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Costs when ``G`` was given as separable costs ((n, m) or (n*m,)) rather than a quadratic form."""
    G = np.asarray(G)
    k = shape[0] * shape[1]
    if G.shape == (k, k) and k > 1:
        return None
    if G.shape in (shape, (k,)):
        return check_costs(G, shape)
    return None


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
    reference_bytes: int | None = None,
) -> list[Solution]:
    """Minimise ``t^T G t`` under every budget; plans come back in the order of ``budgets``.

    ``G`` may also be separable costs, shape (n, m) or (n*m,); then this is :func:`solve_separable_front`.
    The front is monotone: each budget also starts from the plan of the next smaller budget.
    """
    sizes, allowed = check_sizes(sizes, allowed)
    n, m = sizes.shape
    costs = _separable_view(G, (n, m))
    if costs is not None:
        return solve_separable_front(costs, sizes, budgets, base_bytes, allowed, bins, reference_bytes=reference_bytes)
    G = check_gram(G, (n, m))
    diag = np.diag(G).reshape(n, m)
    if not _has_cross_terms(G, n, m):
        return solve_separable_front(diag, sizes, budgets, base_bytes, allowed, bins, reference_bytes=reference_bytes)
    rooms = _rooms(sizes, allowed, budgets, base_bytes, reference_bytes)
    extra = sizes - np.where(allowed, sizes, _BIG).min(1)[:, None]
    grid = _grid(sizes, allowed, max(rooms), bins)
    starts = _dp_front(diag, grid, allowed, [grid.capacity(r) for r in rooms])
    out: list[Solution | None] = [None] * len(rooms)
    prev: np.ndarray | None = None
    for k in sorted(range(len(rooms)), key=lambda k: rooms[k]):
        plan = _Plan(G, diag, extra, starts[k])
        plan = _linearise(G, plan, extra, allowed, rooms[k], bins, max_iters)
        plan = _search(plan, allowed, rooms[k], 0)
        if prev is not None:
            alt = _search(_Plan(G, diag, extra, prev), allowed, rooms[k], 0)
            if alt.value() < plan.value():
                plan = alt
        plan = _search(plan, allowed, rooms[k], search)
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
    reference_bytes: int | None = None,
) -> Solution:
    """One budget of :func:`solve_front`."""
    return solve_front(G, sizes, [budget], base_bytes, allowed, max_iters=max_iters, bins=bins,
                       search=search, reference_bytes=reference_bytes)[0]
