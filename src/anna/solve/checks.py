"""The problem's inputs and results: validation of sizes, costs and ``G``, byte and objective accounting, and the
:class:`Solution` and :class:`InfeasibleBudget` that the solvers return or raise. numpy only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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


def separable_costs(G: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """Costs when ``G`` was given as separable costs ((n, m) or (n*m,)) rather than a quadratic form."""
    G = np.asarray(G)
    k = shape[0] * shape[1]
    if G.shape == (k, k) and k > 1:
        return None
    if G.shape in (shape, (k,)):
        return check_costs(G, shape)
    return None


def _solution(status: str, choice: np.ndarray, value: float, sizes: np.ndarray, base: int, budget: int) -> Solution:
    return Solution(status, np.asarray(choice, np.int64), float(value), plan_bytes(sizes, choice, base), int(budget))
