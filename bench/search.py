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
    analyze(run_dir, model=model, validate=30, progress=False, echo=None)
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
    analyze(run_dir, model=model, validate=30, progress=False, echo=None)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/anna-bench-search")
    ap.add_argument("--quick", action="store_true", help="fewer prompts and budgets")
    ap.add_argument("--only", choices=["tiny", "minilm"], default=None)
    args = ap.parse_args()
    out = Path(args.out)
    results = {}
    if args.only in (None, "tiny"):
        results["tiny_sdxl"] = bench_tiny(out, args.quick)
    if args.only in (None, "minilm"):
        results["minilm"] = bench_minilm(out, args.quick)
    for name, r in results.items():
        print(f"{name}: validation {r['validation']}, seconds {r['seconds']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
