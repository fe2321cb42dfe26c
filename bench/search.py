"""Quality of anna's plans against the baselines, at every budget of a sweep, on tiny-sdxl and on MiniLM.

Each model is calibrated, analysed (with validation of the error model) and searched; every plan (anna's DP and the
uniform, greedy, Fisher and random baselines) is applied and its real output MSE measured on the cached calibration
inputs (tiny-sdxl) or on held-out sentences (MiniLM: calibrated on COCO rows 1-200, measured on rows 4001-4500).
Prints a table per model and, as the last line, a JSON object with every figure.

    OMP_NUM_THREADS=2 python bench/search.py [--out /tmp/anna-bench-search] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from anna.analyze.error_model import measured_mse, reference_outputs
from anna.analyze.stage import analyze, load_analysis
from anna.calibrate import calibrate
from anna.prompts import load_prompts
from anna.search import search

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2014_val_captions.tsv"
ANALYZE_OPTIONS: dict = {}  # extra arguments of analyze() in the sweeps (--error-model)


def sweep(analysis, top: float = 0.60, n: int = 11) -> list[float]:
    """0.50..0.60 where feasible; a model whose smallest plan is larger (MiniLM: its embeddings are no unit) sweeps
    the 0.10 above its smallest ratio instead."""
    lo = analysis.size_ratio(analysis.sizes.argmin(1))
    start = max(0.50, float(np.ceil(lo * 1000) / 1000))
    return [round(x, 4) for x in np.linspace(start, max(top, start + 0.10), n)]


def sketch_error(analysis, ks=(256, 1024, 4096), plans: int = 200) -> dict:
    """Relative error of sketched predictions against the exact model (whose 'sketches' are the full deltas),
    on random plans spanning the sweep: the sketch is linear, so it can be applied to the stored deltas."""
    import torch

    from anna.analyze.error_model import ErrorModel
    from anna.analyze.sketch import CountSketch
    from anna.analyze.validate import random_plans

    em = analysis.error_model
    n, m, d = em.sketches.shape
    if d != em.n_elements:
        return {"note": "the analysis was sketched, not exact; rerun with --sketch 0 to measure the sketch error"}
    lo = analysis.size_ratio(analysis.sizes.argmin(1))
    ratios = np.linspace(lo, 0.60, plans)
    choices = [c for _, c in random_plans(analysis.sizes, analysis.base_bytes, analysis.total_bytes_fp16, ratios, 1)]
    exact = np.array([sum(em.parts(c)) for c in choices])
    out = {"output_elements": d}
    for k in ks:
        cs = CountSketch(k, seed=0)
        flat = torch.from_numpy(em.sketches.reshape(n * m, d))
        sk = torch.stack([cs(row, 0) for row in flat]).numpy().reshape(n, m, k)
        approx = ErrorModel(em.units, em.options, em.diag, sk, em.n_elements)
        rel = np.abs(np.array([sum(approx.parts(c)) for c in choices]) - exact) / exact
        out[f"k={k}"] = {"median_rel_error": float(np.median(rel)), "p90_rel_error": float(np.quantile(rel, 0.9))}
    return out


def quality(front: dict, key: str) -> dict:
    """Per budget: anna's MSE, each baseline's, and whether anna is at most every feasible baseline."""
    rows, wins = [], 0
    for k, p in enumerate(front["points"]):
        row = {"budget": p["budget"], "anna": p[key]}
        for name, pts in front["baselines"].items():
            row[name] = pts[k].get(key)
        others = [v for n, v in row.items() if n not in ("budget", "anna") and v is not None]
        row["anna_best"] = all(row["anna"] <= v * (1 + 1e-9) for v in others)
        wins += row["anna_best"]
        rows.append(row)
    return {"rows": rows, "budgets_where_anna_is_best": wins, "budgets": len(rows)}


def held_out(run_dir: Path, heldout_model, front: dict) -> None:
    """Re-measure every plan of the front on held-out batches (generic models), in place as 'heldout_mse'."""
    from anna.analyze.quantizer import UnitQuantizer
    from anna.calibrate import load_stats

    module, samples = heldout_model.component(), list(heldout_model.batches)
    quantizer = UnitQuantizer(module, load_stats(run_dir))

    def run(batch):
        import torch

        with torch.inference_mode():
            return heldout_model.forward(module, batch)

    refs = reference_outputs(run, samples)
    for series in [front["points"], *front["baselines"].values()]:
        for p in series:
            if "plan" not in p:
                continue
            plan = json.loads((run_dir / p["plan"]).read_text())
            with quantizer({u: o for u, o in plan["units"].items() if u in quantizer.units}):
                p["heldout_mse"] = measured_mse(run, samples, refs)


def fidelity_both(name: str, model, run_dir: Path, n: int = 32, heldout_model=None) -> dict:
    """Both error models built from the same calibration; both judged on the same `n` plans near the front (half
    from each model's DP, with perturbed copies), spanning S to S + 0.10: Spearman of predicted against measured
    MSE on the cached calibration inputs (and on held-out batches for generic models). Also the analysis time
    and component passes of each."""
    import shutil

    from anna.analyze.fidelity import fidelity, near_front_plans
    from anna.analyze.linearized import DEFAULT_PROBES, count_passes
    from anna.analyze.stage import open_trial

    out: dict = {"model": name, "probes": DEFAULT_PROBES}
    analyses = {}
    for mode in ("exact", "linear"):
        dst = run_dir.parent / f"{run_dir.name}-{mode}"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(run_dir, dst, ignore=shutil.ignore_patterns("analysis", "plans", "front.json"))
        t0 = time.perf_counter()
        analyze(dst, model=model, validate=0, progress=False, echo=None, error_model=mode)
        out[f"{mode}_seconds"] = time.perf_counter() - t0
        analyses[mode] = load_analysis(dst, corrected=False)
    trial = open_trial(run_dir.parent / f"{run_dir.name}-exact", model)
    n_units, m = analyses["exact"].error_model.shape
    from anna.analyze.batching import batch_size

    rows = batch_size(trial.samples[0]) or 1
    passes = count_passes(n_units, m, len(trial.samples), rows)
    out["rows_per_sample"] = rows
    out["passes"] = passes
    out["seconds_per_pass"] = {k: out[f"{k}_seconds"] / passes[k] for k in passes}
    # Plans over the unit-options both models scored: the linear model prunes options that are dominated early on
    # (never chosen by search either), and a plan that uses one has no prediction there.
    ok = np.logical_and.reduce([np.isfinite(a.error_model.diag) for a in analyses.values()])
    out["pruned_unit_options"] = int((~np.isfinite(analyses["linear"].error_model.diag)).sum())
    plans, seen = [], set()
    for a in analyses.values():
        for _, c in near_front_plans(a.error_model.gram(), a.sizes, a.base_bytes, a.total_bytes_fp16, ok, n // 2):
            if tuple(c) not in seen:
                seen.add(tuple(c))
                plans.append(c)
    refs = reference_outputs(trial.run, trial.samples)
    em = analyses["exact"].error_model

    def on_calibration(choice):
        with trial.quantizer(trial.assignment(em.options, choice)):
            return measured_mse(trial.run, trial.samples, refs)

    measures = {"calibration": on_calibration}
    if heldout_model is not None:
        from anna.analyze.quantizer import UnitQuantizer
        from anna.calibrate import load_stats

        module, batches = heldout_model.component(), list(heldout_model.batches)
        quantizer = UnitQuantizer(module, load_stats(run_dir))

        def run(batch):
            import torch

            with torch.inference_mode():
                return heldout_model.forward(module, batch)

        held_refs = reference_outputs(run, batches)

        def on_heldout(choice):
            with quantizer(trial.assignment(em.options, choice)):
                return measured_mse(run, batches, held_refs)

        measures["heldout"] = on_heldout

    report = fidelity(plans, {k: a.error_model.predict for k, a in analyses.items()}, measures)
    report["size_ratios"] = [analyses["exact"].size_ratio(c) for c in plans]
    out.update(report)
    pairs = {k: v for k, v in report.items() if isinstance(v, dict) and "spearman" in v}
    figures = [f"{k} Spearman {v['spearman']:.3f}" for k, v in pairs.items()]
    print(f"{name}: fidelity on {len(plans)} plans from {min(report['size_ratios']):.4f} to "
          f"{max(report['size_ratios']):.4f}: " + ", ".join(figures))
    return out


def sdxl_cost(tiny: dict, samples: int = 1, rows: int = 16) -> dict:
    """Analysis passes on the `sdxl` meta inventory for both models (8 cached CFG pairs merged into one sample of
    16 rows, as analysis merges them), and the time predicted from tiny-sdxl's measured seconds per pass, scaled by
    the UNet parameter ratio (a pass costs about its parameters' FLOPs) and by the rows per pass."""
    from anna.adapters import load_model
    from anna.analyze.linearized import count_passes
    from anna.analyze.stage import default_probes
    from anna.inventory import build_inventory
    from anna.options.registry import default_bag

    big = build_inventory(load_model("sdxl"))
    kinds = [u.kind for u in big.units]
    bag = default_bag(kinds)
    small = build_inventory(load_model("tiny-sdxl"))
    scale = sum(u.params for u in big.units) / sum(u.params for u in small.units)
    passes = count_passes(len(big.units), len(bag), samples, rows, default_probes(kinds, samples * rows))
    scale *= rows / tiny["rows_per_sample"]
    seconds = {k: passes[k] * tiny["seconds_per_pass"][k] * scale for k in passes}
    return {"units": len(big.units), "options": len(bag), "samples": samples, "rows": rows, "passes": passes,
            "linear_over_exact_passes": passes["linear"] / passes["exact"], "param_scale_vs_tiny": scale,
            "predicted_seconds_cpu": seconds}


def print_table(title: str, q: dict) -> None:
    names = [k for k in q["rows"][0] if k not in ("budget", "anna_best")]
    print(f"\n{title}: anna best at {q['budgets_where_anna_is_best']}/{q['budgets']} budgets")
    print(f"{'budget':>8} " + " ".join(f"{n:>11}" for n in names))
    for r in q["rows"]:
        cells = " ".join(f"{r[n]:>11.4g}" if r[n] is not None else f"{'-':>11}" for n in names)
        print(f"{r['budget']:>8.3f} {cells}{'' if r['anna_best'] else '   <- baseline better'}")


def bench_tiny(out: Path, quick: bool) -> dict:
    from anna.adapters import load_model

    model = load_model("tiny-sdxl")
    run_dir = out / "tiny"
    t0 = time.time()
    calibrate(model, run_dir, prompts=load_prompts(f"{COCO}:1-{4 if quick else 8}"), cache_samples=4, progress=False)
    t1 = time.time()
    analyze(run_dir, model=model, validate=30, progress=False, echo=None, **ANALYZE_OPTIONS)
    t2 = time.time()
    ratios = sweep(load_analysis(run_dir), n=5 if quick else 11)
    front = json.loads(search(run_dir, ratios, model=model, echo=None).read_text())
    t3 = time.time()
    validation = json.loads((run_dir / "analysis" / "validation.json").read_text())
    q = quality(front, "measured_mse")
    print_table("tiny-sdxl UNet, measured MSE on the cached calibration inputs", q)
    sketch = sketch_error(load_analysis(run_dir))
    print(f"sketch error against exact deltas: {sketch}")
    return {
        "sketch_error": sketch,
        "seconds": {"calibrate": t1 - t0, "analyze": t2 - t1, "search": t3 - t2},
        "validation": {k: validation[k] for k in ("n_plans", "spearman", "r2", "scale", "r2_scaled", "correction")},
        "quality": q,
    }


def bench_minilm(out: Path, quick: bool) -> dict:
    from anna.adapters import minilm

    calib = load_prompts(f"{COCO}:1-200")
    test = load_prompts(f"{COCO}:4001-{4100 if quick else 4500}")
    model = minilm.load(calib)
    heldout = minilm.load(test)
    run_dir = out / "minilm"
    t0 = time.time()
    calibrate(model, run_dir, cache_samples=7, progress=False)
    t1 = time.time()
    analyze(run_dir, model=model, validate=30, progress=False, echo=None, **ANALYZE_OPTIONS)
    t2 = time.time()
    ratios = sweep(load_analysis(run_dir), n=5 if quick else 11)
    front = json.loads(search(run_dir, ratios, model=model, echo=None).read_text())
    held_out(run_dir, heldout, front)
    t3 = time.time()
    validation = json.loads((run_dir / "analysis" / "validation.json").read_text())
    q_cal = quality(front, "measured_mse")
    q_held = quality(front, "heldout_mse")
    print_table("MiniLM, measured MSE on the calibration batches", q_cal)
    print_table("MiniLM, MSE on held-out rows 4001-4500", q_held)
    return {
        "seconds": {"calibrate": t1 - t0, "analyze": t2 - t1, "search_and_heldout": t3 - t2},
        "validation": {k: validation[k] for k in ("n_plans", "spearman", "r2", "scale", "r2_scaled", "correction")},
        "quality_calibration": q_cal,
        "quality_heldout": q_held,
    }


def bench_fidelity(out: Path, quick: bool, minilm_too: bool = True) -> dict:
    """Fidelity of both error models on tiny-sdxl's UNet and MiniLM, and the analysis cost predicted at SDXL size."""
    from anna.adapters import load_model, minilm

    n = 16 if quick else 32
    model = load_model("tiny-sdxl")
    run_dir = out / "fid-tiny"
    calibrate(model, run_dir, prompts=load_prompts(f"{COCO}:1-8"), cache_samples=4, progress=False)
    tiny = fidelity_both("tiny-sdxl", model, run_dir, n)
    if not minilm_too:
        return {"tiny_sdxl": tiny, "sdxl_analysis_cost": sdxl_cost(tiny)}
    calib = minilm.load(load_prompts(f"{COCO}:1-200"))
    heldout = minilm.load(load_prompts(f"{COCO}:4001-{4100 if quick else 4500}"))
    run_dir = out / "fid-minilm"
    calibrate(calib, run_dir, cache_samples=7, progress=False)
    mini = fidelity_both("MiniLM", calib, run_dir, n, heldout)
    cost = sdxl_cost(tiny)
    print(f"sdxl analysis: {cost['passes']} passes (linear/exact {cost['linear_over_exact_passes']:.4f}), "
          f"predicted CPU seconds {cost['predicted_seconds_cpu']}")
    return {"tiny_sdxl": tiny, "minilm": mini, "sdxl_analysis_cost": cost}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/anna-bench-search")
    ap.add_argument("--quick", action="store_true", help="fewer prompts and budgets")
    ap.add_argument("--only", choices=["tiny", "minilm", "fidelity", "fidelity-tiny"], default=None)
    ap.add_argument("--error-model", default=None, choices=["exact", "linear"], help="anna's model in the sweeps")
    args = ap.parse_args()
    out = Path(args.out)
    results = {}
    if args.error_model:
        ANALYZE_OPTIONS["error_model"] = args.error_model
    if args.only in ("fidelity", "fidelity-tiny"):
        results["fidelity"] = bench_fidelity(out, args.quick, minilm_too=args.only == "fidelity")
        print(json.dumps(results))
        return
    if args.only in (None, "tiny"):
        results["tiny_sdxl"] = bench_tiny(out, args.quick)
    if args.only in (None, "minilm"):
        results["minilm"] = bench_minilm(out, args.quick)
    for name, r in results.items():
        print(f"{name}: validation {r['validation']}, seconds {r['seconds']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
