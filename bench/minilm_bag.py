"""anna's plans on the real MiniLM encoder with the seed's bag (fp16 + four FP8) and with the fp16math options.

Calibrates once on COCO caption rows 1-200 (every batch cached), then per bag: analyze (exact trials) and search at
the budgets S, S+0.01, S+0.02, S+0.05, S+0.10 (S: the default bag's smallest feasible ratio, rounded up to 3
decimals) plus the fixed budgets of issue 11's table, and measures every plan on held-out rows 4001-4500 (embedding
SQNR against FP32). Prints one line per (bag, budget), the analysis and search wall times per bag, and a JSON object
as the last line. The baseline is the seed's bag, measured in the same run (`seed`: fp16 + four FP8; `default`: the
default bag; `ext`: the seed's bag plus six fp16math options; `absmax+fp16math`: fp16, fp8-absmax and those six).

    python bench/minilm_bag.py [--tsv PATH] [--calib 1-200] [--eval 4001-4500] [--validate 30] [--bags seed,default]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

from anna.adapters import minilm
from anna.analyze.stage import analyze, load_analysis
from anna.calibrate import calibrate, load_stats
from anna.inventory import build_inventory
from anna.options.apply import apply
from anna.options.quant import sqnr_db
from anna.options.registry import DEFAULT_BAG, SEED_BAG
from anna.plan import load_plan
from anna.prompts import load_prompts
from anna.search import search

DEFAULT_TSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2014_val_captions.tsv"
FP16MATH = ("fp8-absmax-fp16math", "fp8-absmax-fp16math-fp16q", "fp8-absmax-fp16math-fp16k",
            "fp8-absmax-fp16math-fp16v", "fp8-absmax-fp16math-fp16o", "fp8-absmax-fp16math-fp16kv")
BAGS = {
    "seed": list(SEED_BAG),
    "default": list(DEFAULT_BAG),
    "ext": list(SEED_BAG) + list(FP16MATH),
    "absmax+fp16math": ["fp16", "fp8-absmax", *FP16MATH],
}
ISSUE_BUDGETS = (0.775, 0.785, 0.80, 0.81)


def embed(model: minilm.Model, module: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model.forward(module, b) for b in model.batches])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tsv", default=str(DEFAULT_TSV))
    ap.add_argument("--calib", default="1-200")
    ap.add_argument("--eval", dest="eval_rows", default="4001-4500")
    ap.add_argument("--validate", type=int, default=30)
    ap.add_argument("--bags", default="seed,default")
    ap.add_argument("--keep", default=None, help="keep the run folders here")
    args = ap.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="anna-minilm-bag-"))
    calib = minilm.load(load_prompts(f"{args.tsv}:{args.calib}"))
    t0 = time.time()
    calibrate(calib, root / "calibration-run", cache_samples=len(calib.batches), progress=False, log=None)
    t_calib = time.time() - t0
    evalm = minilm.load(load_prompts(f"{args.tsv}:{args.eval_rows}"))
    ref = embed(evalm, evalm.component())
    stats = load_stats(root / "calibration-run")
    inventory = build_inventory(evalm)
    out: dict = {"calibrate_s": round(t_calib, 1), "bags": {}}
    budgets: list[float] | None = None
    for bag_name in args.bags.split(","):
        bag = BAGS[bag_name]
        run = root / bag_name
        if not run.exists():
            shutil.copytree(root / "calibration-run", run)
        t0 = time.time()
        analyze(run, model=calib, bag=bag, validate=args.validate, progress=False, echo=None)
        t_analyze = time.time() - t0
        if budgets is None:
            s = math.ceil(load_analysis(run).size_ratio(load_analysis(run).sizes.argmin(1)) * 1000) / 1000
            budgets = sorted({round(s + d, 3) for d in (0.0, 0.01, 0.02, 0.05, 0.10)} | set(ISSUE_BUDGETS))
        t0 = time.time()
        front = json.loads(search(run, budgets, model=calib, baselines=False, echo=None).read_text())
        t_search = time.time() - t0
        rows = []
        for p in front["points"]:
            if not p.get("feasible", True):
                continue
            plan = load_plan(run / p["plan"], inventory)
            module = copy.deepcopy(evalm.component())
            apply(module, plan, stats, echo=None)
            emb = embed(evalm, module)
            sq = sqnr_db(ref, emb)
            counts: dict[str, int] = {}
            for o in plan.units.values():
                counts[o] = counts.get(o, 0) + 1
            rows.append({"budget": p["budget"], "size_ratio": p["size_ratio"], "heldout_sqnr_db": sq,
                         "heldout_mse": float((ref.double() - emb.double()).pow(2).mean()),
                         "options": counts})
            print(f"{bag_name:<16} budget {p['budget']:.3f} size {p['size_ratio']:.4f}  held-out SQNR {sq:6.2f} dB  "
                  f"{counts}", flush=True)
        print(f"{bag_name:<16} analyze {t_analyze:.1f}s  search {t_search:.1f}s", flush=True)
        out["bags"][bag_name] = {"bag": bag, "analyze_s": round(t_analyze, 1), "search_s": round(t_search, 1),
                                 "points": rows}
    names = list(out["bags"])
    if len(names) > 1 and "seed" in out["bags"]:
        base = {r["budget"]: r["heldout_sqnr_db"] for r in out["bags"]["seed"]["points"]}
        for n in names:
            if n == "seed":
                continue
            gains = [r["heldout_sqnr_db"] - base[r["budget"]] for r in out["bags"][n]["points"] if r["budget"] in base]
            out["bags"][n]["gain_db_vs_seed"] = {"min": min(gains), "max": max(gains), "mean": sum(gains) / len(gains)}
            out["bags"][n]["analyze_time_ratio_vs_seed"] = out["bags"][n]["analyze_s"] / out["bags"]["seed"][
                "analyze_s"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
