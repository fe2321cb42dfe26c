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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 4096
DEFAULT_MAX_ITERS = 20
DEFAULT_SEARCH = 100
DEFAULT_RELAX = 15
RELAX_AUTO_LIMIT = 1000  # relax=None: the relaxation restart runs when n * m is at most this
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
    """Bytes above each unit's smallest allowed option (``extra``, 0 where not allowed) and the bin width."""

    width: int
    extra: np.ndarray
    exact: bool

    def steps(self, rounding: str) -> np.ndarray:
        """Sizes in bins: rounded ``"up"`` or to the ``"nearest"`` bin (the same when exact)."""
        if rounding == "up":
            return -(-self.extra // self.width)
        return (self.extra + self.width // 2) // self.width


def _grid(sizes: np.ndarray, allowed: np.ndarray, room: int, bins: int) -> _Grid:
    """Bin width: gcd of the extra sizes when ``span / gcd <= bins`` (exact), else the span over ``bins``."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    floor = np.where(allowed, sizes, _BIG).min(1)
    extra = np.where(allowed, sizes - floor[:, None], 0)
    g = int(np.gcd.reduce(extra.ravel()))
    span = min(int(room), int(extra.max(1).sum()))
    width = 1 if g == 0 else g * max(1, -(-span // (g * bins)))
    return _Grid(width, extra, bool((extra % width == 0).all()))


def _distinct_steps(costs: np.ndarray, steps: np.ndarray, extra: np.ndarray, allowed: np.ndarray) -> list[list[int]]:
    """Per unit, the options worth a DP pass, by increasing step: per step, the cheapest allowed one (then fewest
    bytes). Options often share a size (the FP8 variants do), so this cuts the passes from m to the distinct sizes."""
    key = np.where(allowed, steps, _BIG)
    order = np.lexsort((extra, costs, key), axis=-1)
    ordered = np.take_along_axis(key, order, 1)
    first = np.ones_like(allowed)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    keep = first & (ordered != _BIG)
    return [row[k].tolist() for row, k in zip(order, keep, strict=True)]


def _dp_front(costs: np.ndarray, grid: _Grid, allowed: np.ndarray, rooms: Sequence[int],
              rounding: str = "up") -> list[np.ndarray | None]:
    """Min-cost plans for every room (bytes above the all-smallest plan) from one table.

    Cell ``b`` after unit ``i`` holds the cheapest partial plan whose sizes sum to ``b`` bins, and its real bytes.
    Each room takes the cheapest final cell whose real bytes fit, so every plan fits in real
    bytes. Rounding "up" always finds one (the all-smallest plan sits in cell 0); "nearest" merges plans more evenly
    but may find none for a tight room (then ``None``). Exact when the width divides every size.
    """
    n, _ = costs.shape
    steps, extra = grid.steps(rounding), grid.extra
    limit = max(int(r) for r in rooms)
    top = min(int(steps.max(1).sum()), limit // grid.width + n)
    best = np.full(top + 1, np.inf)
    best[0] = 0.0
    used = np.zeros(top + 1, np.int64)
    used_max = 0
    arg = np.empty((n, top + 1), np.int16)
    for i, options in enumerate(_distinct_steps(costs, steps, extra, allowed)):
        new, new_used, pick = best, used, None
        for j in options:  # by increasing step; the first has step 0
            s = int(steps[i, j])
            if s > top:
                break
            cand = best[: top + 1 - s] + costs[i, j]
            cand_used = used[: top + 1 - s] + extra[i, j]
            if used_max + extra[i, j] > limit:
                cand[cand_used > limit] = np.inf
            if pick is None:
                new, new_used, pick = cand, cand_used, np.full(top + 1, j, np.int16)
                continue
            better = cand < new[s:]
            np.copyto(new[s:], cand, where=better)
            np.copyto(new_used[s:], cand_used, where=better)
            np.copyto(pick[s:], np.int16(j), where=better)
        best, used = new, new_used
        used_max = int(used.max())
        arg[i] = pick
    plans: list[np.ndarray | None] = []
    for room in rooms:
        value = np.where(used <= room, best, np.inf)
        b = int(np.argmin(value))
        if not np.isfinite(value[b]):
            plans.append(None)
            continue
        choice = np.empty(n, np.int64)
        for i in range(n - 1, -1, -1):
            choice[i] = arg[i, b]
            b -= int(steps[i, choice[i]])
        plans.append(choice)
    return plans


def _dp_best(costs: np.ndarray, grid: _Grid, allowed: np.ndarray, rooms: Sequence[int]) -> list[np.ndarray]:
    """Plans from the "nearest" table, falling back to the always-feasible "up" table where it has none."""
    plans = _dp_front(costs, grid, allowed, rooms, "nearest")
    if grid.exact or all(p is not None for p in plans):
        return plans  # type: ignore[return-value]
    up = _dp_front(costs, grid, allowed, rooms, "up")
    return [p if p is not None else q for p, q in zip(plans, up, strict=True)]  # type: ignore[misc]


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

    Each step takes the best admissible move, improving or not: steepest descent down to a local optimum, then it
    climbs out. Pairs are tried only when no single move improves; on large problems they come from a candidate list.
    A move back to an option a unit just left is tabu for n/4 to n/2 steps (at most 20) unless it reaches a new best.
    Stops after ``iters`` steps without a new best (``iters=0``: plain descent) and returns the best plan seen.
    """
    n, m = plan.n, plan.m
    flat_sizes, ok_all = plan.sizes.ravel(), allowed.ravel()
    unit = np.repeat(np.arange(n), m)
    scale = float(np.abs(plan.costs).max()) if plan.G is None else float(np.abs(np.diag(plan.G)).max())
    tol = 1e-12 * max(scale, 1e-300)
    tenure_lo, tenure_hi = int(np.clip(n // 4, 1, 10)), int(np.clip(n // 2, 2, 20))
    rng = np.random.default_rng(0)  # varied tenures break cycles; the fixed seed keeps the solver deterministic
    free_at = np.zeros(n * m, np.int64)
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
        tabu = free_at > step
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
            free_at[plan.x[q // m]] = step + 1 + int(rng.integers(tenure_lo, tenure_hi + 1))
            plan.move(q // m, q % m)
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


def _least_eigenvalue(C: np.ndarray, iters: int) -> float:
    """Power iteration for the least eigenvalue of a symmetric PSD matrix (an overestimate when stopped early)."""
    v = np.random.default_rng(0).normal(size=C.shape[0])
    v /= np.linalg.norm(v)
    top = float(np.trace(C))
    for _ in range(iters):  # largest eigenvalue of C
        w = C @ v
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            break
        top, v = norm, w / norm
    for _ in range(iters):  # largest eigenvalue of top*I - C, i.e. top - least eigenvalue of C
        w = top * v - C @ v
        norm = float(np.linalg.norm(w))
        if norm == 0.0:
            break
        v = w / norm
    return float(v @ (C @ v))


def _diagonal_shift(G: np.ndarray, iters: int = 60) -> np.ndarray:
    """``d = a * diag(G)`` with ``G - diag(d)`` PSD: ``a`` is 0.9 times the least eigenvalue of the correlation
    matrix (by power iteration above 1500 unit-options, and then only nearly PSD). On binary plans
    ``t^T G t = t^T (G - D) t + d^T t``; the larger ``d``, the tighter the convex relaxation of the right-hand side."""
    g = np.diag(G)
    live = g > 0
    if not live.any():
        return np.zeros_like(g)
    scale = 1.0 / np.sqrt(g[live])
    C = G[np.ix_(live, live)] * scale[:, None] * scale[None, :]
    least = float(np.linalg.eigvalsh(C)[0]) if C.shape[0] <= 1500 else _least_eigenvalue(C, iters)
    return max(0.0, 0.9 * least) * g


def _relax(G: np.ndarray, shift: np.ndarray, plan: _Plan, allowed: np.ndarray, room: int, bins: int,
           iters: int) -> np.ndarray:
    """A start from the convex relaxation: Frank-Wolfe on ``t^T (G - D) t + d^T t`` over the hull of the plans that
    fit (the DP is the linear oracle), from ``plan``; the returned plan is the DP on the gradient at the end."""
    n, m = plan.n, plan.m
    t = np.zeros(n * m)
    t[plan.x] = 1.0
    coarse = _grid(plan.sizes, allowed, room, min(bins, 1024))

    def gradient(t: np.ndarray) -> np.ndarray:
        return 2.0 * (G @ t - shift * t) + shift

    for _ in range(iters):
        grad = gradient(t)
        v = _dp_best(grad.reshape(n, m), coarse, allowed, [room])[0]
        step = -t
        step[np.arange(n) * m + v] += 1.0
        gap = -float(grad @ step)
        if gap <= 1e-12 * max(abs(float(grad @ t)), 1e-300):
            break
        idx = np.flatnonzero(step)
        curv = 2.0 * float(step[idx] @ (G[np.ix_(idx, idx)] @ step[idx]) - shift[idx] @ step[idx] ** 2)
        t += (min(1.0, gap / curv) if curv > 0 else 1.0) * step
    fine = _grid(plan.sizes, allowed, room, bins)
    return _dp_best(gradient(t).reshape(n, m), fine, allowed, [room])[0]


def separable_costs(G: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
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
