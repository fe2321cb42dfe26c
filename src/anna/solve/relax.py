"""A restart from the convex relaxation: Frank-Wolfe on ``t^T (G - D) t + d^T t`` with the byte-bin DP as the linear
oracle, where the diagonal ``D`` keeps ``G - D`` PSD so that the relaxation is convex. numpy only."""

from __future__ import annotations

import numpy as np

from anna.solve.bins import _dp_best, _grid
from anna.solve.local_search import _Plan


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
