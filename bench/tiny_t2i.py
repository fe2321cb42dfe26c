"""tiny-t2i: does the trained pipeline draw what its prompts say, before and after quantization?

    OMP_NUM_THREADS=1 python bench/tiny_t2i.py [--prompts 200] [--run DIR] [--steps 1,2]

1. Runs `anna run` with its defaults (tiny-t2i) into DIR (resumes when DIR is already done) and times it.
2. Generates the first N held-out prompts (never trained on; the run tunes on held-out prompts 200-399) with the FP32
   pipeline, the all-FP8 checkpoint and the selected checkpoint, at each steps value.
3. Scores each set: `attribute_accuracy` (the nearest-render classifier: every slot and the background right),
   `clip_matched` and `clip_shuffled` (the domain CLIP score against each image's own prompt, and against the prompt
   of the next image), and their difference `clip_matched_minus_shuffled`; FID (domain CLIP features) of the
   quantized sets against the FP32 set.
4. absmax/p99 of every UNet unit's input activation (calibration statistics) for tiny-t2i against random tiny-sdxl.

The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def activation_ratios(run_dir: Path) -> dict[str, float]:
    """Per-unit absmax / p99 magnitude of the input activations in a run's calibration statistics, summarised."""
    from anna.report import activation_ranges

    stats = json.loads((run_dir / "calibration" / "stats.json").read_text())
    r = np.array([a / p for _, _, a, p, _ in activation_ranges(stats) if p > 0])
    return {"units": int(r.size), "median": float(np.median(r)), "p90": float(np.percentile(r, 90)),
            "max": float(r.max()), "share_over_10": float(np.mean(r > 10))}


def main() -> None:
    from anna.adapters import load_model, tiny_t2i
    from anna.domain import nearest, shapes
    from anna.evaluate.clip_features import ClipImageFeatures
    from anna.evaluate.evaluate import apply_checkpoint
    from anna.evaluate.metrics import ClipScorer, FidScorer
    from anna.generate import generate_images
    from anna.run import ALL_FP8, RunConfig, run_all

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--run", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--steps", default="1,2")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = tempfile.TemporaryDirectory()
    run_dir = Path(args.run or Path(tmp.name) / "run")

    t0 = time.perf_counter()
    run_all(RunConfig(run_dir=str(run_dir)), echo=lambda s: None, progress=False)
    run_seconds = time.perf_counter() - t0
    selected = json.loads((run_dir / "selected.json").read_text()) if (run_dir / "selected.json").is_file() else None
    print(f"anna run (defaults, tiny-t2i): {run_seconds:.0f}s; selected: "
          f"{selected['name'] if selected else 'none'} (size ratio {selected['size_ratio'] if selected else '-'})")

    prompts = shapes.held_out_prompts(args.prompts)
    shuffled = prompts[1:] + prompts[:1]
    clip = ClipScorer(str(tiny_t2i.CLIP_DIR), device="cpu")
    fid = FidScorer(ClipImageFeatures.from_folder(tiny_t2i.CLIP_DIR), device="cpu")
    steps = [int(s) for s in args.steps.split(",")]
    plans = {"fp32": None, "all_fp8": run_dir / "checkpoints" / ALL_FP8}
    if selected:
        plans["selected"] = Path(selected["checkpoint"])
    result: dict[str, object] = {"prompts": len(prompts), "run_seconds": round(run_seconds, 1),
                                 "selected_name": selected["name"] if selected else None,
                                 "selected_size_ratio": selected["size_ratio"] if selected else None}
    renders = [shapes.render_caption(p) for p in prompts]
    result["renders"] = {"attribute_accuracy": nearest.accuracy(renders, prompts),
                         "clip_matched_minus_shuffled": clip.score(renders, prompts) - clip.score(renders, shuffled)}
    fp32_images: dict[int, list] = {}
    for name, ckpt in plans.items():
        model = load_model("tiny-t2i")
        if ckpt is not None:
            apply_checkpoint(model, ckpt, echo=lambda s: None)
        row: dict[str, object] = {}
        for s in steps:
            settings = tiny_t2i.DEFAULTS.__class__(**{**tiny_t2i.DEFAULTS.__dict__, "steps": s})
            t1 = time.perf_counter()
            images = generate_images(model, prompts, settings, seed=0, progress=False)
            gen_s = time.perf_counter() - t1
            matched, mismatched = clip.score(images, prompts), clip.score(images, shuffled)
            entry = {"attribute_accuracy": nearest.accuracy(images, prompts), "clip_matched": matched,
                     "clip_shuffled": mismatched, "clip_matched_minus_shuffled": matched - mismatched,
                     "generate_seconds": round(gen_s, 1)}
            if name == "fp32":
                fp32_images[s] = images
            else:
                fid.set_reference(fp32_images[s])
                entry["fid_vs_fp32"] = fid.score(images)
            row[f"steps_{s}"] = entry
            print(f"{name:9s} {s} step(s): accuracy {entry['attribute_accuracy']:.3f}  CLIP matched {matched:.2f} "
                  f"shuffled {mismatched:.2f} (diff {matched - mismatched:.2f})"
                  + (f"  FID vs fp32 {entry['fid_vs_fp32']:.3f}" if "fid_vs_fp32" in entry else ""))
        result[name] = row
    default = f"steps_{tiny_t2i.DEFAULTS.steps}" if tiny_t2i.DEFAULTS.steps in steps else f"steps_{steps[-1]}"
    for name in plans:
        result[f"{name}_attribute_accuracy"] = result[name][default]["attribute_accuracy"]
        result[f"{name}_clip_matched_minus_shuffled"] = result[name][default]["clip_matched_minus_shuffled"]
    result["attribute_accuracy"] = result["fp32_attribute_accuracy"]
    result["clip_matched_minus_shuffled"] = result["fp32_clip_matched_minus_shuffled"]

    # Outliers: absmax/p99 of UNet unit inputs, trained tiny-t2i (the run above) against random tiny-sdxl.
    from anna.calibrate import calibrate
    from anna.run import BUILTIN_PROMPTS

    sdxl_run = Path(tmp.name) / "tiny-sdxl"
    calibrate(load_model("tiny-sdxl"), sdxl_run, component="unet", prompts=list(BUILTIN_PROMPTS[:8]),
              cache_samples=1, progress=False)
    result["absmax_over_p99"] = {"tiny-t2i": activation_ratios(run_dir), "tiny-sdxl": activation_ratios(sdxl_run)}
    for k, v in result["absmax_over_p99"].items():
        print(f"absmax/p99 of UNet unit inputs, {k}: median {v['median']:.2f}, p90 {v['p90']:.2f}, max {v['max']:.2f}, "
              f"share > 10: {v['share_over_10']:.2f} ({v['units']} units)")
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
