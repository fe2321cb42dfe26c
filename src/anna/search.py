"""`anna search`: plans from the error model, one per budget, the Pareto front, and the baselines at the same budgets.

Writes `plans/size-0.501.json` per budget, `plans/baselines/<method>-size-0.501.json`, and `front.json`:
`{"points": [{"budget", "size_ratio", "predicted_mse", "measured_mse", "plan", "status"}],
"baselines": {method: [...]}}`.
With `measure`, every plan is applied to the component and run on the cached calibration inputs, so the measured MSE
sits beside the predicted one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from anna.analyze.batching import first_rows, rows_of
from anna.analyze.linearized import dominated
from anna.analyze.stage import Analysis, load_analysis
from anna.artifacts import write_json
from anna.budgets import feasible_ratios, plan_names
from anna.inventory import Inventory, canonical_assignment
from anna.runfolder import RunFolder, digest, file_digest

BASELINES = ("uniform", "greedy", "fisher", "random")
MEASURE_ROWS = 64  # batch rows that search measures plans on (MiniLM: the same picks as on all 200 at 1/3 the time)


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
    # Options worse on their own than a no-larger option of the same unit never enter anna's DP.
    keep = ok & ~dominated(np.where(ok, em.diag, np.inf), sizes)
    results: dict[str, list[Any]] = {"anna": solve_front(G, sizes, budgets, base, keep, reference_bytes=total)}
    # Variants of anna's own model for the measured pick: uncorrected (every cross term) and own MSEs only.
    if (em.diag_scale, em.cross_scale) != (1.0, 1.0):
        raw = replace(em, diag_scale=1.0, cross_scale=1.0)
        results["anna:uncorrected"] = solve_front(raw.gram(), sizes, budgets, base, keep, reference_bytes=total)
    if em.cross_scale != 0.0:
        own = np.where(ok, em.diag, 0.0)
        results["anna:own-only"] = solve_separable_front(own, sizes, budgets, base, keep, reference_bytes=total)
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
    results: dict[str, list[Any]],
    budgets: Sequence[int],
    measured: Callable[[np.ndarray], float],
    analysis: Analysis,
    polish: int,
    known: dict[tuple[int, ...], float] | None = None,
    margin: float = 0.05,
    progress: bool = False,
    measure_all: bool = True,
) -> list[str]:
    """The error model proposes, measurement disposes where the model is unsure. At each budget the candidates are
    anna's plans (the corrected model's and the variants'), the plans chosen at smaller budgets, and every plan
    measured so far (`known`: choice -> MSE, baselines included) that fits. A candidate is measured only when its
    prediction is within `margin` of the best prediction; the best measured one is taken (an already-measured plan
    that beats the model's at fewer bytes wins); a lone candidate is measured only with `measure_all`. `polish` > 0
    then tries same-size swaps by measurement. Updates
    results["anna"] in place and returns where each chosen plan came from."""
    from tqdm.auto import tqdm

    known = known if known is not None else {}
    em, sizes, base = analysis.error_model, analysis.sizes, analysis.base_bytes
    rows = np.arange(sizes.shape[0])
    variants = [k for k in results if k == "anna" or k.startswith("anna:")]
    chosen: list[Any] = []
    sources: list[str] = []
    template = next(s for v in variants for s in results[v] if s is not None)
    for k in tqdm(range(len(results["anna"])), desc="search: pick", unit="budget", disable=not progress):
        candidates = [(results[v][k], v) for v in variants if results[v][k] is not None]
        candidates += [(c, "smaller-budget plan") for c in chosen]
        for key in list(known):
            choice = np.array(key)
            used = int(base + sizes[rows, choice].sum())
            if used <= budgets[k]:
                sol = replace(template, choice=choice, objective=em.predict(choice), status="feasible", bytes=used,
                              budget=budgets[k])
                candidates.append((sol, "measured plan"))
        predictions = [em.predict(c.choice) for c, _ in candidates]
        floor = min(predictions)
        pool = [
            (c, src) for (c, src), p in zip(candidates, predictions, strict=True)
            if tuple(int(x) for x in c.choice) in known or p <= floor * (1 + margin)
        ]
        distinct = {tuple(int(x) for x in c.choice) for c, _ in pool}
        if len(distinct) == 1 and not measure_all:  # nothing to decide: the model's plan, unmeasured
            best, source = pool[0]
        else:
            best, source = min(pool, key=lambda cs: measured(cs[0].choice))
        choice = _polish_same_size(best.choice, analysis, measured, polish) if polish > 0 else best.choice
        if not np.array_equal(choice, best.choice):
            best = replace(best, choice=choice, objective=em.predict(choice), status="feasible")
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
    polish: int = 0,
    margin: float = 0.05,
    measure_all: bool = True,
    measure_rows: int = MEASURE_ROWS,
    model: Any = None,
    progress: bool = False,
    echo: Callable[[str], Any] | None = print,
) -> Path:
    """Solve for every ratio, write the plans and `front.json`; returns the path of front.json. With `measure`,
    the baselines' plans are measured, and anna's candidates whose predictions lie within `margin` of the best (see
    `_pick_measured`), and, with `measure_all`, every plan written (else only those measured to decide); with
    `polish` > 0 the most sensitive units of each plan are tried in their other same-size
    options. Plans are measured on the first cached samples that hold `measure_rows` batch rows (0: all of them):
    the candidates at a budget are compared on the same inputs, and a paired comparison needs few. The time of each
    phase is echoed."""
    import time

    from anna.plan import make_plan

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    t0 = time.perf_counter()
    analysis = load_analysis(run_dir, corrected)
    inputs = _inputs_digest(folder, sorted(ratios), measure, baselines, corrected, polish, margin, measure_all,
                            measure_rows)
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
    budgets = [int(np.floor(r * analysis.total_bytes_fp16)) for r in ratios]
    results = _solve_all(analysis, ratios)
    phases = {"solve": time.perf_counter() - t0}
    if not baselines:
        results = {k: v for k, v in results.items() if k == "anna" or k.startswith("anna:")}
    trial = None
    samples: list[Any] = []
    inventory: Inventory
    if measure:
        from anna.analyze.error_model import measured_mse, reference_outputs
        from anna.analyze.stage import open_trial

        trial = open_trial(run_dir, model)
        inventory = trial.inventory
        samples = first_rows(trial.samples, measure_rows)
        refs = reference_outputs(trial.run, samples)
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
                cache[key] = measured_mse(trial.run, samples, refs)
        return cache[key]

    t0 = time.perf_counter()
    sources = ["model"] * len(ratios)
    if trial is not None:
        from tqdm.auto import tqdm

        todo = [sol for name, sols in results.items() if name in BASELINES for sol in sols if sol is not None]
        for sol in tqdm(todo, desc="search: baselines", unit="plan", disable=not progress):
            measured(sol.choice)
        phases["measure baselines"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sources = _pick_measured(results, budgets, measured, analysis, polish, cache, margin, progress, measure_all)
        phases["pick anna's plans"] = time.perf_counter() - t0
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
            key = tuple(int(c) for c in sol.choice)
            real = measured(sol.choice) if measure_all or key in cache else None
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
    front["search"] = {"measured_plans": len(cache), "measured_rows": rows_of(samples) if trial else 0,
                       "seconds": {k: round(v, 3) for k, v in phases.items()}}
    path = write_json(folder.front_json, front)
    if echo:
        echo(_table(front))
        echo(f"search: {len(cache)} plans measured; " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
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
