"""Where anna's and ModelOpt's FP8 quantization of the same plan differ: a plan of a network (the all-FP8 plan, or a
peer plan that bench/peers.py wrote, `--plan OUT/peer_plan_N.json`), quantized by ModelOpt (`mtq.quantize` with
bench/peers.py's per-channel FP8 config on the plan's FP8 Linears and Conv2ds, calibrated on the calibration inputs)
and by anna (`fp8-absmax` on Conv2d/Linear units, `fp8-absmax-fp16math[-fp16...]` on attention units, anna's
calibration of an existing bench/peers.py run folder), measured on the held-out inputs; then ModelOpt's model with
anna's activation ranges (each input quantizer's amax set to anna's calibrated max |x|), and with anna's FP16
rounding of the quantized layers' biases, to tell whether the gap comes from the ranges, the biases or elsewhere.

    OMP_NUM_THREADS=1 python bench/peers_numerics.py --model tiny-sdxl --run /tmp/peers-sdxl/anna

Measured (input ranges equal on every layer, weights equal to 1 ulp): on tiny-sdxl's UNet (random FP32 weights) the
peer plan at S+0.02 measured 9.741e-5 by ModelOpt, 9.840e-5 by anna (1.010x), and 9.843e-5 by ModelOpt with its
quantized layers' biases rounded to FP16, as anna stores them: the whole gap. On tiny-t2i (weights FP16 already) the
biases change nothing, and the all-FP8 gap (anna 1.022x) is FP8 tie-rounding: scaling every activation range by
1 +- 2^-20 moved anna's own MSE by +0.6% / -1.2% (2^-16: +4.9%); the gap's sign flips across budgets.
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path

import torch
from peers import FP8_PER_CHANNEL, embed, scores
from peers_models import MODELS, load_case

from anna.analyze.quantizer import UnitQuantizer
from anna.calibrate import load_stats
from anna.options.attention_fp16math import ROLE_INPUT, attention_projections
from anna.units import unit_modules


def anna_amax(module: torch.nn.Module, stats: dict) -> dict[str, float]:
    """Layer name -> anna's input amax (max |x| over the calibration), per Linear/Conv2d, as fp8-absmax uses it."""
    out = {}
    for name, kind, unit in unit_modules(module):
        if kind == "attention":
            for role, path in attention_projections(unit, name).items():
                s = stats[name][ROLE_INPUT[role]]
                out[f"{name}.{path}"] = max(abs(float(s.min)), abs(float(s.max)))
        else:
            s = stats[name]["input"]
            out[name] = max(abs(float(s.min)), abs(float(s.max)))
    return out


def fp8_layers(module: torch.nn.Module, plan: dict[str, str]) -> set[str]:
    """The Linears and Conv2ds that an anna plan of fp8-absmax / fp8-absmax-fp16math[-fp16<roles>] quantizes."""
    out = set()
    for name, kind, unit in unit_modules(module):
        option = plan.get(name, "fp16")
        if option == "fp16":
            continue
        if kind != "attention":
            out.add(name)
            continue
        kept = option.partition("-fp16math-fp16")[2]
        out |= {f"{name}.{path}" for role, path in attention_projections(unit, name).items() if role not in kept}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-sdxl", choices=MODELS[1:])
    ap.add_argument("--component", default="unet", choices=["unet", "vae_decoder"])
    ap.add_argument("--run", required=True, help="anna's run folder of a bench/peers.py run (OUT/anna) on --calib")
    ap.add_argument("--plan", default=None, help="a peer plan (OUT/peer_plan_N.json); default: all FP8")
    ap.add_argument("--calib", default=None)
    ap.add_argument("--test", default=None)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import modelopt.torch.quantization as mtq

    t2i = args.model == "tiny-t2i"
    case = load_case(args.model, args.component, args.calib or ("1-100" if t2i else "1-200"),
                     args.test or ("101-200" if t2i else "4001-4500"), args.batch_size)
    calib, heldout = case.calib, case.heldout
    base = calib.component()
    ref = embed(heldout, base)
    stats = load_stats(args.run)
    result: dict = {"model": case.name}

    quantizer = UnitQuantizer(heldout.component(), stats)
    plan = {n: "fp8-absmax-fp16math" if k == "attention" else "fp8-absmax" for n, k, _ in unit_modules(base)}
    if args.plan:
        plan = json.loads(Path(args.plan).read_text())["units"]
    with quantizer(plan):
        result["anna"] = scores(ref, embed(heldout, heldout.component()))
    fp8 = fp8_layers(base, plan)
    result["plan"] = {"file": args.plan, "fp8_layers": len(fp8)}
    config = {**FP8_PER_CHANNEL, "quant_cfg": [*FP8_PER_CHANNEL["quant_cfg"], *(
        {"quantizer_name": f"{name}.*", "enable": False} for name, m in base.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and name not in fp8)]}
    peer = mtq.quantize(copy.deepcopy(base), config,
                        forward_loop=lambda m: [calib.forward(m, b) for b in calib.batches])
    result["modelopt"] = scores(ref, embed(heldout, peer))
    mine = anna_amax(base, stats)
    ratios, n_quant = [], 0
    for name, m in peer.named_modules():
        q = getattr(m, "input_quantizer", None)
        if q is None or name not in mine:
            continue
        if not q.is_enabled:
            continue
        n_quant += 1
        ratios.append(float(q.amax) / mine[name] if mine[name] > 0 else float("nan"))
    t = torch.tensor(ratios)
    result["input_amax_modelopt_over_anna"] = {"layers": len(ratios), "enabled": n_quant, "min": float(t.min()),
                                               "max": float(t.max()), "median": float(t.median())}
    # ModelOpt's model with anna's activation ranges.
    ranged = copy.deepcopy(peer)
    for name, m in ranged.named_modules():
        q = getattr(m, "input_quantizer", None)
        if q is not None and q.is_enabled and name in mine:
            q.amax = torch.tensor(mine[name])
    result["modelopt_with_anna_ranges"] = scores(ref, embed(heldout, ranged))
    # ... and with anna's FP16 biases and other FP16-rounded tensors of quantized units.
    rounded = copy.deepcopy(ranged)
    with torch.no_grad():
        for m in rounded.modules():
            q = getattr(m, "weight_quantizer", None)
            if q is not None and q.is_enabled and getattr(m, "bias", None) is not None:
                m.bias.copy_(m.bias.half().float())
    result["modelopt_with_anna_ranges_fp16_bias"] = scores(ref, embed(heldout, rounded))
    for key in ("modelopt", "modelopt_with_anna_ranges", "modelopt_with_anna_ranges_fp16_bias"):
        print(f"{key}: MSE {result[key]['mse']:.4e}; anna over it {result['anna']['mse'] / result[key]['mse']:.4f}")
    print(f"anna: MSE {result['anna']['mse']:.4e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
