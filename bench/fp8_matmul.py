"""Real FP8 matmul speed: `quant.fp8_linear` (torch._scaled_mm, per-tensor activation and per-channel weight scales)
against a plain FP16/BF16 `F.linear` of the same shape, in one run, on the SDXL UNet's linear shapes.

On a GPU with FP8 tensor cores (H100/H200) this is the speed case for FP8; on a CPU it only shows that the path runs.
Prints a table of ratios and a JSON object as the last line.

    python bench/fp8_matmul.py [--device cuda] [--tokens 4096]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from anna.options.quant import fp8_linear, fp8_scale_from_range, fp8_weight_scale, quantize_fp8, scaled_mm_available

# (in, out) of SDXL UNet linears: attention projections at widths 640/1280, the GEGLU and FF output, cross-attn k/v.
SHAPES = [(640, 640), (1280, 1280), (1280, 10240), (5120, 1280), (2048, 1280)]


def _time(fn, device: str, repeats: int) -> float:
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=4096, help="rows of the activation (batch x sequence)")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    dev = args.device
    base_dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    out_dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    if not scaled_mm_available(dev, out_dtype):
        print(json.dumps({"device": dev, "error": f"torch._scaled_mm is not available on {dev} for {out_dtype}"}))
        return
    rows = []
    for k, n in SHAPES:
        g = torch.Generator().manual_seed(k + n)
        x = torch.randn(args.tokens, k, generator=g).to(dev, base_dtype)
        w = (torch.randn(n, k, generator=g) / k**0.5).to(dev, base_dtype)
        w_scale = fp8_weight_scale(w.float())
        w_q = quantize_fp8(w.float(), w_scale, axis=0)
        x_scale = fp8_scale_from_range(-x.abs().max(), x.abs().max()).to(dev)
        t_ref = _time(lambda: F.linear(x, w), dev, args.repeats)  # noqa: B023
        t_fp8 = _time(lambda: fp8_linear(x, w_q, x_scale, w_scale, out_dtype=out_dtype), dev, args.repeats)  # noqa: B023
        ref = F.linear(x.float(), w.float())
        got = fp8_linear(x, w_q, x_scale, w_scale, out_dtype=out_dtype).float()
        sqnr = float(10 * torch.log10(ref.pow(2).sum() / (ref - got).pow(2).sum()))
        rows.append({"in": k, "out": n, "baseline_ms": 1e3 * t_ref, "fp8_ms": 1e3 * t_fp8,
                     "speedup": t_ref / t_fp8, "sqnr_db": sqnr})
        print(f"{k:>5} x {n:<6} {str(base_dtype)[6:]:>8} {1e3 * t_ref:8.3f} ms   fp8 {1e3 * t_fp8:8.3f} ms   "
              f"speed-up {t_ref / t_fp8:5.2f}x   SQNR {sqnr:5.1f} dB")
    print(json.dumps({"device": dev, "baseline_dtype": str(base_dtype), "tokens": args.tokens, "shapes": rows}))


if __name__ == "__main__":
    main()
