"""Where the error model must be right: plans near the front, across the sizes search chooses from.

`near_front_plans` draws, for target ratios from the model's smallest feasible ratio S up to S + span, the DP's plan
and a perturbed copy of it (a few units moved to other options that still fit the budget). Validating on these,
rather than on random plans that sit orders of magnitude above the front, measures the model where decisions are
made: between plans of about the same size and error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from anna.analyze.validate import spearman


def smallest_ratio(sizes: np.ndarray, base_bytes: int, total_fp16: int, allowed: np.ndarray | None = None) -> float:
    """The size ratio of the smallest plan (every unit in its smallest allowed option)."""
    big = np.iinfo(np.int64).max
    masked = sizes if allowed is None else np.where(allowed, sizes, big)
    return float((base_bytes + masked.min(1).sum()) / total_fp16)


def perturb(choice: np.ndarray, sizes: np.ndarray, budget: int, base_bytes: int, allowed: np.ndarray,
            rng: np.random.Generator, moves: int) -> np.ndarray:
    """`choice` with up to `moves` units set to another allowed option, keeping the plan within `budget` bytes."""
    out = choice.copy()
    rows = np.arange(len(out))
    for _ in range(moves):
        for _try in range(20):
            i = int(rng.integers(len(out)))
            options = [j for j in np.flatnonzero(allowed[i]) if j != out[i]]
            if not options:
                continue
            j = int(rng.choice(options))
            total = base_bytes + sizes[rows, out].sum() - sizes[i, out[i]] + sizes[i, j]
            if total <= budget:
                out[i] = j
                break
    return out


def near_front_plans(
    gram: np.ndarray,
    sizes: np.ndarray,
    base_bytes: int,
    total_fp16: int,
    allowed: np.ndarray,
    n: int,
    span: tuple[float, float] = (0.0, 0.10),
    seed: int = 0,
) -> list[tuple[float, np.ndarray]]:
    """`n` distinct plans: the DP's plans at ceil(n/2) ratios from S + span[0] to S + span[1], then copies of them
    with 1-3 units moved (within the same budget). Fewer come back only when no more distinct plans are found."""
    from anna.solve import solve_front

    if n <= 0:
        return []
    lo = smallest_ratio(sizes, base_bytes, total_fp16, allowed)
    ratios = np.linspace(lo + span[0], lo + span[1], (n + 1) // 2)
    budgets = [max(int(np.floor(r * total_fp16)), int(np.ceil(lo * total_fp16))) for r in ratios]
    sols = solve_front(gram, sizes, budgets, base_bytes, allowed, reference_bytes=total_fp16)
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    out: list[tuple[float, np.ndarray]] = []

    def add(r: float, choice: np.ndarray) -> None:
        key = tuple(int(c) for c in choice)
        if key not in seen and len(out) < n:
            seen.add(key)
            out.append((float(r), np.asarray(choice)))

    for r, sol in zip(ratios, sols, strict=True):
        add(r, sol.choice)
    for _round in range(10 * n):  # perturbed copies, cycling over the budgets, until n distinct plans
        if len(out) >= n:
            break
        k = _round % len(ratios)
        add(ratios[k], perturb(sols[k].choice, sizes, budgets[k], base_bytes, allowed, rng, int(rng.integers(1, 4))))
    return out


def fidelity(
    plans: Sequence[np.ndarray], predictors: dict[str, Callable[[np.ndarray], float]],
    measures: dict[str, Callable[[np.ndarray], float]],
) -> dict[str, Any]:
    """Spearman and median measured/predicted of every predictor against every measurement, on the same plans."""
    measured = {name: np.array([f(c) for c in plans]) for name, f in measures.items()}
    out: dict[str, Any] = {"n_plans": len(plans)}
    for pname, predict in predictors.items():
        p = np.array([predict(c) for c in plans])
        for mname, m in measured.items():
            out[f"{pname}_vs_{mname}"] = {
                "spearman": spearman(p, m),
                "median_measured_over_predicted": float(np.median(m / np.maximum(p, 1e-30))),
            }
    out["measured"] = {k: v.tolist() for k, v in measured.items()}
    return out
