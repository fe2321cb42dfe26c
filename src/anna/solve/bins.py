"""The byte-bin DP: one table over (units x byte bins) serves every budget, and each budget backtracks its own plan.

Sizes are counted above each unit's smallest allowed option, in bins of a common width (exact when the width divides
every size). Each cell also carries its real bytes, so every plan fits in real bytes. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from anna.solve.checks import _BIG


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

