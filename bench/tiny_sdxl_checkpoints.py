"""tiny-sdxl: checkpoints of an all-`fp8-moderate` plan and of the published ten-units-in-FP16 plan.

Calibrates the UNet on COCO caption rows (default 1-8), then per plan: applies it and generates; rounds what the
checkpoint stores in FP16 (`round_to_checkpoint_`) and generates; saves the checkpoint, loads it into a fresh base
model and generates again. Reports the UNet size ratio (measured on the file: tensor bytes
over FP16 bytes), the header overhead, whether the images before saving and after loading are identical, and the
image MSE (0-255) against the FP32 model on evaluation rows (default 4001-4008). The last line is a JSON object.

    python bench/tiny_sdxl_checkpoints.py [--calib 1-8] [--eval 4001-4008] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from anna.adapters import load_model
from anna.adapters.sdxl_meta import PUBLISHED_FP16_UNITS, published_plan
from anna.calibrate import calibrate, load_stats
from anna.export.checkpoint import checkpoint_bytes, load_checkpoint_into, round_to_checkpoint_, save_checkpoint
from anna.generate import generate_images
from anna.inventory import build_inventory
from anna.options.apply import apply
from anna.plan import plan_from_json
from anna.prompts import load_prompts

DEFAULT_TSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2014_val_captions.tsv"
PLANS = {
    "all-fp8-moderate": {"default": "fp8-moderate", "units": {}},
    "published-10-fp16": published_plan(),
    "all-fp8-absmax": {"default": "fp8-absmax", "units": {}},
    "all-qdq-u8u16": {"default": "qdq-u8u16", "units": {}},
}
DEFAULT_PLANS = "all-fp8-moderate,published-10-fp16"


def images(model, prompts, seed: int = 0) -> np.ndarray:
    ims = generate_images(model, prompts, model.defaults, seed=seed, progress=False)
    return np.stack([np.asarray(im, dtype=np.float64) for im in ims])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tsv", default=str(DEFAULT_TSV))
    ap.add_argument("--calib", default="1-8")
    ap.add_argument("--eval", dest="eval_rows", default="4001-4008")
    ap.add_argument("--out", default=None, help="where to keep the run and checkpoints (default: a temp folder)")
    ap.add_argument("--plans", default=DEFAULT_PLANS, help=f"comma list of {', '.join(PLANS)}")
    args = ap.parse_args()
    t0 = time.time()
    work = Path(args.out or tempfile.mkdtemp(prefix="anna-tiny-"))
    base = load_model("tiny-sdxl")
    names = set(build_inventory(base, "unet").names)
    missing = [n for n in PUBLISHED_FP16_UNITS if n not in names]
    calibrate(base, work / "run", component="unet", prompts=load_prompts(f"{args.tsv}:{args.calib}"), progress=False)
    stats = load_stats(work / "run")
    prompts = load_prompts(f"{args.tsv}:{args.eval_rows}")
    ref = images(load_model("tiny-sdxl"), prompts)
    results = {}
    for label in args.plans.split(","):
        model = load_model("tiny-sdxl")
        plan = plan_from_json(PLANS[label], build_inventory(model, "unet"))
        apply(model.component("unet"), plan, stats, echo=None)
        applied = images(model, prompts)  # fp16 units and the rest still hold their FP32 values
        rounded = round_to_checkpoint_(model.component("unet"), plan)
        before = images(model, prompts) if rounded else applied  # exactly what the checkpoint will hold
        ckpt = work / label
        info = save_checkpoint(model, "unet", plan, ckpt, model_spec="tiny-sdxl", echo=None)
        loaded = load_model("tiny-sdxl")
        load_checkpoint_into(loaded, ckpt, echo=None)
        after = images(loaded, prompts)
        nb = checkpoint_bytes(ckpt)
        results[label] = {
            "fp16_units": len(plan.fp16_units),
            "plan_bytes": plan.bytes,
            "tensor_bytes": nb["tensor_bytes"],
            "header_bytes": nb["header_bytes"],
            "file_bytes": nb["file_bytes"],
            "byte_match": nb["tensor_bytes"] == plan.bytes,
            "size_ratio": info.size_ratio,
            "rounded_tensors": rounded,
            "mse_vs_fp32_applied_fp32_rest": float(((applied - ref) ** 2).mean()),
            "identical_after_load": bool(np.array_equal(before, after)),
            "max_abs_diff_after_load": float(np.abs(before - after).max()),
            "mse_vs_fp32_before_save": float(((before - ref) ** 2).mean()),
            "mse_vs_fp32_after_load": float(((after - ref) ** 2).mean()),
        }
        r = results[label]
        print(f"{label:<20} size {r['size_ratio']:.4f}  tensor bytes {r['tensor_bytes']:,} (plan {r['plan_bytes']:,}) "
              f"header {r['header_bytes']:,}  identical {r['identical_after_load']}  "
              f"MSE vs FP32 {r['mse_vs_fp32_after_load']:.2f}", flush=True)
    print(json.dumps({"model": "tiny-sdxl", "component": "unet", "calib_rows": args.calib, "eval_rows": args.eval_rows,
                      "missing_published_units": missing, "seconds": round(time.time() - t0, 1),
                      "plans": results}))


if __name__ == "__main__":
    main()
