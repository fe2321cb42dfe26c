"""Benchmark: ONNX Runtime QDQ (uint8 weights, uint16 activations) against ONNX Runtime FP32 on tiny-sdxl.

One run exports the four components (FP32 and QDQ, calibrated on COCO captions captured through the pipeline), then
generates the same prompts with both ORT pipelines, interleaved prompt by prompt so that both see the same machine
load. Reported: median latency per component call and per image (end to end), and model bytes, each as QDQ / FP32.
The last line printed is a JSON object.

    python bench/onnx.py [--out DIR] [--prompts 6] [--steps 4] [--threads N] [--reuse] [--providers P1,P2]

On CPU, expect QDQ to be slower than FP32: ORT's CPU kernels have no uint16-activation integer path, so each
QuantizeLinear/DequantizeLinear pair runs as an extra op in front of a float kernel. QDQ is a storage and
accelerator (EP) format; the byte ratio is the number that carries over.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

# Run as `python bench/onnx.py`, this file's folder heads sys.path and this file would shadow the `onnx` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder")
COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2014_val_captions.tsv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="Export folder (default: a temporary folder).")
    parser.add_argument("--prompts", type=int, default=6, help="Timed prompts (COCO rows 101..), after one warm-up.")
    parser.add_argument("--calibration", type=int, default=8, help="Calibration prompts (COCO rows 1..).")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: ORT's choice).")
    parser.add_argument("--providers", default=None, help="Comma-separated ORT providers (default: CUDA if present).")
    parser.add_argument("--reuse", action="store_true", help="Reuse an existing export in --out.")
    args = parser.parse_args()

    import torch

    from anna.adapters import load_model
    from anna.export.onnx_qdq import MANIFEST, export_pipeline_onnx
    from anna.export.onnx_runtime import OnnxSDXLPipeline
    from anna.prompts import load_prompts

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="anna-onnx-bench."))
    model = load_model("tiny-sdxl")
    settings = replace(model.defaults, steps=args.steps)
    if not (args.reuse and (out / MANIFEST).is_file()):
        calib = load_prompts(f"{COCO}:1-{args.calibration}")
        export_pipeline_onnx(model, out, settings, calib, keep_fp32=True, capture_samples=args.calibration,
                             echo=None)
    manifest = json.loads((out / MANIFEST).read_text())
    providers = args.providers.split(",") if args.providers else None
    pipes = {v: OnnxSDXLPipeline(model.pipeline, out, v, providers, args.threads) for v in ("fp32", "qdq")}
    prompts = load_prompts(f"{COCO}:101-{101 + args.prompts}")
    for i, prompt in enumerate(prompts):
        for pipe in pipes.values():
            pipe(prompt, settings.steps, settings.guidance, settings.height, settings.width,
                 generator=torch.Generator().manual_seed(i), output_type="pil")
            if i == 0:  # the first prompt warms up both sessions; drop its times
                pipe.seconds.clear()
                for s in pipe.sessions.values():
                    s.seconds.clear()

    rows = []
    print(f"tiny-sdxl {settings.height}x{settings.width}, {settings.steps} steps, guidance {settings.guidance}; "
          f"{len(prompts) - 1} timed prompts; ORT {pipes['qdq'].sessions['unet'].session.get_providers()[0]}")
    print(f"{'':<16}{'fp32 ms':>10}{'qdq ms':>10}{'time':>8}{'fp32 bytes':>14}{'qdq bytes':>14}{'bytes':>8}")
    for c in COMPONENTS:
        entry = manifest["components"][c]
        ms = {v: 1e3 * statistics.median(p.sessions[c].seconds) for v, p in pipes.items()}
        row = {"component": c, "fp32_ms": ms["fp32"], "qdq_ms": ms["qdq"], "latency_ratio": ms["qdq"] / ms["fp32"],
               "fp32_bytes": entry["fp32_bytes"], "qdq_bytes": entry["bytes"],
               "bytes_ratio": entry["bytes"] / entry["fp32_bytes"]}
        rows.append(row)
        print(f"{c:<16}{row['fp32_ms']:>10.2f}{row['qdq_ms']:>10.2f}{row['latency_ratio']:>7.2f}x"
              f"{row['fp32_bytes']:>14,}{row['qdq_bytes']:>14,}{row['bytes_ratio']:>7.3f}x")
    e2e = {v: 1e3 * statistics.median(p.seconds) for v, p in pipes.items()}
    fp32_total = sum(r["fp32_bytes"] for r in rows)
    qdq_total = sum(r["qdq_bytes"] for r in rows)
    print(f"{'end to end':<16}{e2e['fp32']:>10.2f}{e2e['qdq']:>10.2f}{e2e['qdq'] / e2e['fp32']:>7.2f}x"
          f"{fp32_total:>14,}{qdq_total:>14,}{qdq_total / fp32_total:>7.3f}x")
    summary = {
        "bench": "onnx.qdq_vs_fp32",
        "model": "tiny-sdxl",
        "settings": {"steps": settings.steps, "guidance": settings.guidance, "height": settings.height,
                     "width": settings.width},
        "provider": pipes["qdq"].sessions["unet"].session.get_providers()[0],
        "threads": args.threads,
        "timed_prompts": len(prompts) - 1,
        "components": rows,
        "end_to_end": {"fp32_ms": e2e["fp32"], "qdq_ms": e2e["qdq"], "latency_ratio": e2e["qdq"] / e2e["fp32"],
                       "fp32_bytes": fp32_total, "qdq_bytes": qdq_total, "bytes_ratio": qdq_total / fp32_total},
        "export": str(out),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
