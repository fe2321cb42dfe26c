"""Budgets of a search: parsing a sweep, naming its plans, and which budgets the bag can meet."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from anna.analyze.stage import Analysis
from anna.errors import AnnaError
from anna.runfolder import plan_name

MAX_BUDGETS = 1000  # budgets in one sweep (each one is solved, measured and written)


def parse_sizes(size: float | None = None, sizes: str | None = None) -> list[float]:
    """`--size 0.501` or `--sizes 0.50:0.60:0.01` (start:stop:step, stop included) to a list of ratios."""
    if (size is None) == (sizes is None):
        raise AnnaError("give exactly one of --size or --sizes")
    if size is not None:
        values = [size]
    else:
        number = r"\s*(\d+(?:\.\d*)?|\.\d+)\s*"
        m = re.fullmatch(f"{number}:{number}:{number}", sizes or "")
        if not m:
            raise AnnaError(f"--sizes must read START:STOP:STEP, e.g. 0.50:0.60:0.01 (got '{sizes}')")
        start, stop, step = (float(g) for g in m.groups())
        if step <= 0 or stop < start:
            raise AnnaError("--sizes needs STEP > 0 and STOP >= START")
        count = int(np.floor((stop - start) / step + 1e-6)) + 1  # 0.999 / 0.001 is 998.99...
        if count > MAX_BUDGETS:
            raise AnnaError(f"--sizes {sizes} asks for {count:,} budgets; a sweep has at most {MAX_BUDGETS:,}: "
                            "use a larger STEP")
        values = [round(start + k * step, 6) for k in range(count)]
    for v in values:
        if not 0 < v <= 1.5:
            raise AnnaError(f"size ratio {v} is out of range (0, 1.5]")
    return values


def feasible_ratios(analysis: Analysis, ratios: Sequence[float]) -> tuple[list[float], list[float]]:
    """(feasible, skipped) budgets of a sweep: budgets below the smallest plan of the bag are skipped. A single
    budget, or a sweep with no feasible budget, that is infeasible is an error naming the smallest plan."""
    from anna.solve import min_bytes

    em, total = analysis.error_model, analysis.total_bytes_fp16
    smallest = min_bytes(analysis.sizes, analysis.base_bytes, np.isfinite(em.diag))
    feasible = [r for r in ratios if int(np.floor(r * total)) >= smallest]
    skipped = [r for r in ratios if r not in feasible]
    if skipped and (len(ratios) == 1 or not feasible):
        _blame_nonfinite(analysis, min(ratios))
        what = f"budget {ratios[0]} is" if len(ratios) == 1 else f"every budget of the sweep ({ratios[-1]} at most) is"
        raise AnnaError(f"{what} infeasible: the smallest plan of this bag is {smallest / total:.4f} of FP16 "
                        f"({smallest:,} bytes)")
    return feasible, skipped


def _blame_nonfinite(analysis: Analysis, ratio: float) -> None:
    """Raise when a budget is infeasible only because analysis trials were non-finite: the budget is not the problem."""
    from anna.solve import min_bytes

    em, total, sizes, base = analysis.error_model, analysis.total_bytes_fp16, analysis.sizes, analysis.base_bytes
    ok = np.isfinite(em.diag)
    if not ok[:, 1:].any():
        raise AnnaError(
            f"every quantized option of every unit gave a non-finite error in analysis ({int((~ok).sum()):,} trials), "
            "so no plan smaller than FP16 exists: the budget is not the problem; check the calibration warnings "
            "(non-finite activations or weights) and analysis/error_model.json 'nonfinite'"
        )
    smallest = min_bytes(sizes, base, ok)
    if int(np.floor(ratio * total)) >= min_bytes(sizes, base, np.ones_like(ok)):
        bad = [f"{em.units[i]}:{em.options[j]}" for i, j in zip(*np.nonzero(~ok), strict=True)]
        raise AnnaError(
            f"budget {ratio} is infeasible only because options whose analysis trials gave non-finite errors "
            f"are excluded ({len(bad):,}, e.g. {bad[0]}): without them the smallest plan is {smallest / total:.4f} of "
            "FP16; check the calibration warnings (non-finite activations or weights)"
        )


def plan_names(ratios: Sequence[float]) -> list[str]:
    """The plan names of a sweep; a budget given twice is an error (its plan would be written, and listed, twice)."""
    names = [plan_name(r) for r in ratios]
    seen: dict[str, float] = {}
    for r, n in zip(ratios, names, strict=True):
        if n in seen:
            raise AnnaError(f"budget {r} is given twice in the sweep")
        seen[n] = r
    return names
