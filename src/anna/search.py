"""`anna search`: plans from the error model, one per budget, the Pareto front, and the baselines at the same budgets.

Writes `plans/size-0.501.json` per budget, `plans/baselines/<method>-size-0.501.json`, and `front.json`:
`{"points": [{"budget", "size_ratio", "predicted_mse", "measured_mse", "plan", "status"}],
"baselines": {method: [...]}}`.
With `measure`, every plan is applied to the component and run on the cached calibration inputs, so the measured MSE
sits beside the predicted one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from anna.analyze.stage import Analysis, load_analysis
from anna.artifacts import write_json
from anna.errors import AnnaError
from anna.inventory import Inventory, canonical_assignment
from anna.runfolder import RunFolder, digest, file_digest, plan_name

BASELINES = ("uniform", "greedy", "fisher", "random")
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


def _solve_all(analysis: Analysis, ratios: Sequence[float]) -> dict[str, list[Any]]:
    """anna's DP and the baselines, each at every ratio (None where infeasible for that method)."""
    from anna.solve import (
        fisher,
        greedy_diagonal,
        min_bytes,
        random_plan,
        solve_front,
        solve_separable_front,
        uniform,
    )

    em, sizes, base, total = analysis.error_model, analysis.sizes, analysis.base_bytes, analysis.total_bytes_fp16
    budgets = [int(np.floor(r * total)) for r in ratios]
    # A unit-option whose trial produced NaN/Inf is never chosen (FP16 always is allowed).
    ok = np.isfinite(em.diag)
    if budgets[0] < min_bytes(sizes, base, ok):
        feasible_ratios(analysis, ratios[:1])  # raises, naming the smallest plan
    G = em.gram()
    results: dict[str, list[Any]] = {"anna": solve_front(G, sizes, budgets, base, ok, reference_bytes=total)}
    # Variants of anna's own model for the measured pick: uncorrected (every cross term) and own MSEs only.
    if (em.diag_scale, em.cross_scale) != (1.0, 1.0):
        raw = replace(em, diag_scale=1.0, cross_scale=1.0)
        results["anna:uncorrected"] = solve_front(raw.gram(), sizes, budgets, base, ok, reference_bytes=total)
    if em.cross_scale != 0.0:
        own = np.where(ok, em.diag, 0.0)
        results["anna:own-only"] = solve_separable_front(own, sizes, budgets, base, ok, reference_bytes=total)
    rng = np.random.default_rng(0)
    methods: dict[str, Callable[[int], Any]] = {
        "uniform": lambda b: uniform(G, sizes, b, base, ok),
        "greedy": lambda b: greedy_diagonal(G, sizes, b, base, ok),
        "random": lambda b: random_plan(sizes, b, rng, base, ok, G=G),
    }
    if em.fisher is not None:
        fisher_scores = np.where(ok, em.fisher, 0.0)
        methods["fisher"] = lambda b: fisher(fisher_scores, sizes, b, base, ok, G=G)
    for name, fn in methods.items():
        out = []
        for b in budgets:
            try:
                out.append(fn(b))
            except ValueError:  # InfeasibleBudget, or no plan of that kind (e.g. no option allowed everywhere)
                out.append(None)
        results[name] = out
    return results


def _pick_measured(
    results: dict[str, list[Any]], measured: Callable[[np.ndarray], float], analysis: Analysis, polish: int
) -> list[str]:
    """The error model proposes, measurement disposes: at each budget keep the best measured of anna's candidates
    (the corrected model's plan, the variants', and the plans chosen at smaller budgets, which also fit), then polish
    it by measurement. Updates results["anna"] in place and returns where each chosen plan came from."""
    variants = [k for k in results if k == "anna" or k.startswith("anna:")]
    chosen: list[Any] = []
    sources: list[str] = []
    for k in range(len(results["anna"])):
        candidates = [(results[v][k], v) for v in variants if results[v][k] is not None]
        candidates += [(c, "smaller-budget plan") for c in chosen]
        best, source = min(candidates, key=lambda cs: measured(cs[0].choice))
        choice = _polish_same_size(best.choice, analysis, measured, polish)
        if not np.array_equal(choice, best.choice):
            best = replace(best, choice=choice, objective=analysis.error_model.predict(choice), status="feasible")
            source += " + measured polish"
        chosen.append(best)
        sources.append(source)
        results["anna"][k] = best
    return sources


def _polish_same_size(
    choice: np.ndarray, analysis: Analysis, measured: Callable[[np.ndarray], float], top: int
) -> np.ndarray:
    """For the `top` units with the largest own error in the plan, try every other option of exactly the same size
    (the FP8 variants differ only in their activation range), keeping a swap when the measured MSE drops. Swaps of
    equal size never change the plan's bytes. This catches interactions the additive model misses."""
    em, sizes = analysis.error_model, analysis.sizes
    rows = np.arange(len(choice))
    own = np.where(np.isfinite(em.diag[rows, choice]), em.diag[rows, choice], 0.0)
    best, value = choice.copy(), measured(choice)
    for i in np.argsort(-own)[:top]:
        if best[i] == 0:
            continue
        for j in range(1, sizes.shape[1]):
            if j == best[i] or sizes[i, j] != sizes[i, best[i]] or not np.isfinite(em.diag[i, j]):
                continue
            trial = best.copy()
            trial[i] = j
            v = measured(trial)
            if v < value:
                best, value = trial, v
    return best


def search(
    run_dir: str | Path,
    ratios: Sequence[float],
    *,
    measure: bool = True,
    baselines: bool = True,
    corrected: bool = True,
    polish: int = 8,
    model: Any = None,
    echo: Callable[[str], Any] | None = print,
) -> Path:
    """Solve for every ratio, write the plans and `front.json`; returns the path of front.json. With `measure`, the
    plans are measured, and the `polish` most sensitive units of each are tried in their other same-size options."""
    from anna.plan import make_plan

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    analysis = load_analysis(run_dir, corrected)
    inputs = _inputs_digest(folder, sorted(ratios), measure, baselines, corrected, polish)
    if _up_to_date(folder, inputs):
        if echo:
            echo(f"search in {run_dir} is up to date ({folder.front_json})")
        return folder.front_json
    em = analysis.error_model
    plan_names(sorted(ratios))  # refuses a budget given twice
    ratios, skipped = feasible_ratios(analysis, sorted(ratios))
    if skipped and echo:
        echo(f"skipped {len(skipped)} infeasible budget(s) {', '.join(f'{r:g}' for r in skipped)}: below the "
             f"smallest plan of this bag; searching {', '.join(f'{r:g}' for r in ratios)}")
    results = _solve_all(analysis, ratios)
    if not baselines:
        results = {k: v for k, v in results.items() if k == "anna" or k.startswith("anna:")}
    trial = None
    inventory: Inventory
    if measure:
        from anna.analyze.error_model import measured_mse, reference_outputs
        from anna.analyze.stage import open_trial

        trial = open_trial(run_dir, model)
        inventory = trial.inventory
        refs = reference_outputs(trial.run, trial.samples)
    else:
        from anna.adapters import load_model
        from anna.inventory import build_inventory

        inventory = build_inventory(model or load_model(analysis.model), analysis.component)

    cache: dict[tuple[int, ...], float] = {}

    def measured(choice: np.ndarray) -> float | None:
        if trial is None:
            return None
        key = tuple(int(c) for c in choice)
        if key not in cache:
            with trial.quantizer(dict(zip(em.units, (em.options[c] for c in choice), strict=True))):
                cache[key] = measured_mse(trial.run, trial.samples, refs)
        return cache[key]

    sources = _pick_measured(results, measured, analysis, polish) if trial is not None else ["model"] * len(ratios)
    results = {k: v for k, v in results.items() if not k.startswith("anna:")}

    front: dict[str, Any] = {
        "model": analysis.model,
        "component": analysis.component,
        "error_model": {"diag_scale": em.diag_scale, "cross_scale": em.cross_scale},
        "points": [],
        "baselines": {},
        "skipped": skipped,
        "inputs": inputs,
    }
    for method, sols in results.items():
        rows = []
        for k, (ratio, sol) in enumerate(zip(ratios, sols, strict=True)):
            if sol is None:
                rows.append({"budget": ratio, "feasible": False})
                continue
            assignment = canonical_assignment(
                inventory, dict(zip(em.units, (em.options[c] for c in sol.choice), strict=True)), em.options)
            predicted = em.predict(sol.choice)
            real = measured(sol.choice)
            plan = make_plan(
                inventory,
                assignment,
                bag=list(em.options),
                budget=ratio,
                predicted_mse=predicted,
                measured_mse=real,
                method=method,
                status=sol.status,
                **({"source": sources[k]} if method == "anna" else {}),
            )
            path = plan.save(folder.plan(ratio, method))
            rows.append(
                {
                    "budget": ratio,
                    "size_ratio": plan.size_ratio,
                    "bytes": plan.bytes,
                    "predicted_mse": predicted,
                    "measured_mse": real,
                    "fp16_units": len(plan.fp16_units),
                    "status": sol.status,
                    "plan": str(path.relative_to(run_dir)),
                }
            )
        if method == "anna":
            front["points"] = rows
        else:
            front["baselines"][method] = rows
    path = write_json(folder.front_json, front)
    if echo:
        echo(_table(front))
    return path


def _inputs_digest(folder: RunFolder, ratios: list[float], *args: Any) -> str:
    """What a search is made from: the analysis it reads (error model and validation files) and its settings."""
    paths = (folder.error_model_json, folder.error_model_tensors, folder.validation_json)
    files = [file_digest(p) if p.is_file() else None for p in paths]
    return digest([files, ratios, *args])


def _up_to_date(folder: RunFolder, inputs: str) -> bool:
    """front.json was made from these inputs and its plans are all there."""
    import json

    try:
        front = json.loads(folder.front_json.read_text())
    except (OSError, ValueError):
        return False
    if front.get("inputs") != inputs:
        return False
    rows = [*front.get("points", []), *(r for rs in front.get("baselines", {}).values() for r in rs)]
    return all((folder.root / r["plan"]).is_file() for r in rows if r.get("plan"))


def _table(front: dict[str, Any]) -> str:
    methods = ["anna", *front["baselines"]]
    series = {"anna": front["points"], **front["baselines"]}
    key = "measured_mse" if any(p.get("measured_mse") is not None for p in front["points"]) else "predicted_mse"
    lines = [f"{key} by budget:", f"{'budget':>8} " + " ".join(f"{m:>12}" for m in methods)]
    for k, p in enumerate(front["points"]):
        cells = []
        for m in methods:
            row = series[m][k]
            cells.append(f"{row[key]:>12.4g}" if row.get(key) is not None else f"{'-':>12}")
        lines.append(f"{p['budget']:>8.3f} " + " ".join(cells))
    return "\n".join(lines)
