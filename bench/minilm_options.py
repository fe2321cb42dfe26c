"""MiniLM (all-MiniLM-L6-v2, real weights): every quantizing option of the bag applied to all units, against FP32.

Calibrates on COCO captions rows 1-200, evaluates the mean-pooled sentence embeddings on rows 4001-4500 (read in
place), and reports per option: the checkpoint size ratio, cosine similarity (mean and min over sentences), MSE
and SQNR of the embeddings against FP32; then, for the fp16math options that keep projections in FP16, what they
buy over all-FP8 projections with FP16 math (dB per 0.01 of size ratio). With ``--clip-study`` it also quantizes
the linears alone (attention kept FP32) to isolate what clipping does to MiniLM's outlier channels. The last line
printed is a JSON object.

    python bench/minilm_options.py [--tsv PATH] [--calib 1-200] [--eval 4001-4500] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from anna.adapters import minilm
from anna.calibrate import calibrate, load_stats
from anna.inventory import build_inventory
from anna.options import FP16, option_names
from anna.options.apply import apply
from anna.options.quant import sqnr_db
from anna.plan import make_plan
from anna.prompts import load_prompts

DEFAULT_TSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2014_val_captions.tsv"


def embed(model: minilm.Model, module: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model.forward(module, b) for b in model.batches])


def calibration_stats(model: minilm.Model) -> dict:
    """The calibration stage as `anna calibrate` runs it, into a temporary run folder."""
    with tempfile.TemporaryDirectory(prefix="anna-minilm-") as run:
        calibrate(model, run, cache_samples=1, progress=False)
        return load_stats(run)


def compare(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    cos = F.cosine_similarity(ref.double(), out.double(), dim=1)
    return {
        "cos_mean": cos.mean().item(),
        "cos_min": cos.min().item(),
        "mse": (ref.double() - out.double()).pow(2).mean().item(),
        "sqnr_db": sqnr_db(ref, out),
    }


ALL_FP8 = "fp8-absmax-fp16math"


def fp16math_study(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """What each fp16math option with FP16 projections buys over all-FP8 projections with FP16 math: SQNR gain,
    extra bytes, and the gain per 0.01 of size ratio."""
    ref = results[ALL_FP8]
    out = {}
    for name, row in results.items():
        if name.startswith(f"{ALL_FP8}-fp16"):
            extra = row["size_ratio"] - ref["size_ratio"]
            gain = row["sqnr_db"] - ref["sqnr_db"]
            out[name] = {"extra_bytes": row["bytes"] - ref["bytes"], "gain_db": gain,
                         "db_per_0.01_size": gain / extra * 0.01}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tsv", default=str(DEFAULT_TSV))
    ap.add_argument("--calib", default="1-200")
    ap.add_argument("--eval", dest="eval_rows", default="4001-4500")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clip-study", action="store_true", help="also quantize linears only, attention in FP32")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    calib = minilm.load(load_prompts(f"{args.tsv}:{args.calib}"))
    stats = calibration_stats(calib)
    evalm = minilm.load(load_prompts(f"{args.tsv}:{args.eval_rows}"))
    base = evalm.component()
    ref = embed(evalm, base)
    inv = build_inventory(evalm)
    results: dict[str, dict] = {}
    variants = [(o, "all") for o in option_names() if o != FP16]
    if args.clip_study:
        variants += [(o, "linears") for o in option_names() if o != FP16]
    for opt, scope in variants:
        assignment = {u.name: (opt if scope == "all" or u.kind != "attention" else FP16) for u in inv.units}
        plan = make_plan(inv, assignment)
        module = copy.deepcopy(base)
        apply(module, plan, stats, echo=None)
        row = {"size_ratio": plan.size_ratio, "bytes": plan.bytes, **compare(ref, embed(evalm, module))}
        key = opt if scope == "all" else f"{opt} (linears only)"
        results[key] = row
        print(f"{key:<32} size {row['size_ratio']:.4f}  cos mean {row['cos_mean']:.5f}  min {row['cos_min']:.5f}  "
              f"mse {row['mse']:.3e}  sqnr {row['sqnr_db']:.2f} dB", flush=True)
    per_byte = fp16math_study(results)
    for name, row in per_byte.items():
        print(f"{name:<32} +{row['extra_bytes']:>9,} bytes vs {ALL_FP8}: {row['gain_db']:+.2f} dB "
              f"({row['db_per_0.01_size']:+.2f} dB per 0.01 of size ratio)")
    summary = {
        "model": evalm.name,
        "calib_rows": args.calib,
        "eval_rows": args.eval_rows,
        "n_eval": ref.shape[0],
        "fp16_bytes": inv.total_bytes_fp16,
        "seconds": round(time.time() - t0, 1),
        "options": results,
        "fp16_math_gain_db": results[ALL_FP8]["sqnr_db"] - results["fp8-absmax"]["sqnr_db"],
        "fp16math_per_byte": per_byte,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
