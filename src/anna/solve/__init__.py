"""The solver: one option per unit under a byte budget, minimising the predicted MSE. numpy only, no torch."""

from anna.solve.baselines import fisher, greedy_diagonal, random_plan, uniform
from anna.solve.checks import InfeasibleBudget, Solution, min_bytes, objective, plan_bytes
from anna.solve.dp import (
    DEFAULT_BINS,
    DEFAULT_MAX_ITERS,
    DEFAULT_RELAX,
    DEFAULT_SEARCH,
    solve,
    solve_front,
    solve_separable,
    solve_separable_front,
)

__all__ = [
    "DEFAULT_BINS",
    "DEFAULT_MAX_ITERS",
    "DEFAULT_RELAX",
    "DEFAULT_SEARCH",
    "InfeasibleBudget",
    "Solution",
    "fisher",
    "greedy_diagonal",
    "min_bytes",
    "objective",
    "plan_bytes",
    "random_plan",
    "solve",
    "solve_front",
    "solve_separable",
    "solve_separable_front",
    "uniform",
]
