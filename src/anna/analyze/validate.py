"""Validation of the error model: predicted against measured MSE on random plans across the size range."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(v: Sequence[float]) -> np.ndarray:
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):
            same = v == value
            r[same] = r[same].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def r_squared(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """R^2 of measured against the identity line `measured = predicted` (not a fitted line)."""
    p, m = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    total = ((m - m.mean()) ** 2).sum()
    return float(1 - ((m - p) ** 2).sum() / total) if total > 0 else float("nan")


def fit_correction(own: np.ndarray, cross: np.ndarray, measured: np.ndarray) -> tuple[float, float]:
    """Least squares `measured ~ a * own + b * cross` with a > 0 and 0 <= b <= 1: the interactions may be discounted
    (errors that do not add up) but never inflated or flipped, so the solver cannot exploit a fitted artefact."""
    best = (float("inf"), 1.0, 1.0)
    for b in np.linspace(0.0, 1.0, 101):
        rest = measured - b * cross
        a = float((own * rest).sum() / (own * own).sum()) if (own * own).sum() > 0 else 1.0
        if a <= 0:
            continue
        err = float(((rest - a * own) ** 2).sum())
        best = min(best, (err, a, float(b)))
    return best[1], best[2]


def corrected_report(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Fit the correction on all plans; judge it out of sample by two-fold cross-validation (even/odd plans)."""
    own = np.array([p["own"] for p in points])
    cross = np.array([p["cross"] for p in points])
    m = np.array([p["measured"] for p in points])
    a, b = fit_correction(own, cross, m)
    held = np.empty_like(m)
    for k in (0, 1):
        fit, test = np.arange(len(m)) % 2 != k, np.arange(len(m)) % 2 == k
        fa, fb = fit_correction(own[fit], cross[fit], m[fit])
        held[test] = fa * own[test] + fb * cross[test]
    return {
        "diag_scale": a,
        "cross_scale": b,
        "r2": r_squared(a * own + b * cross, m),
        "r2_out_of_sample": r_squared(held, m),
        "spearman": spearman(a * own + b * cross, m),
        "spearman_diagonal_only": spearman(own, m),
    }


def validation_report(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Correlations, bias and the least-squares scale `measured ~ scale * predicted` (the correction)."""
    p = np.array([q["predicted"] for q in points], np.float64)
    m = np.array([q["measured"] for q in points], np.float64)
    scale = float((p * m).sum() / (p * p).sum()) if (p * p).sum() > 0 else float("nan")
    return {
        "n_plans": len(points),
        "spearman": spearman(p, m),
        "r2": r_squared(p, m),
        "scale": scale,
        "r2_scaled": r_squared(scale * p, m),
        "median_ratio_measured_over_predicted": float(np.median(m / np.maximum(p, 1e-30))),
        "points": points,
    }


def random_plans(
    sizes: np.ndarray, base_bytes: int, total_fp16: int, ratios: Sequence[float], seed: int = 0
) -> list[tuple[float, np.ndarray]]:
    """One random feasible plan per target ratio (the solver's random baseline), skipping infeasible ratios."""
    from anna.solve import InfeasibleBudget, random_plan

    rng = np.random.default_rng(seed)
    out = []
    for r in ratios:
        try:
            sol = random_plan(sizes, int(r * total_fp16), rng, base_bytes)
        except InfeasibleBudget:
            continue
        out.append((r, sol.choice))
    return out


def measure_plans(
    plans: Sequence[tuple[float, np.ndarray]], measure: Callable[[np.ndarray], float], parts: Callable, size_of
) -> list[dict[str, Any]]:
    """Each plan's size, its uncorrected prediction split into own and cross terms, and its measured MSE."""
    out = []
    for r, c in plans:
        own, cross = parts(c)
        out.append(
            {
                "target": r,
                "size_ratio": size_of(c),
                "predicted": own + cross,
                "own": own,
                "cross": cross,
                "measured": measure(c),
            }
        )
    return out
