"""anna against NVIDIA ModelOpt at equal size in anna's byte accounting, on MiniLM, tiny-sdxl's UNet or tiny-t2i.

`--model minilm` (default): the real MiniLM encoder, calibration on COCO rows 1-200, every figure measured on held-out
rows 4001-4500 (sentence-embedding MSE and SQNR against FP32). `--model tiny-sdxl` (random SDXL-architecture weights)
and `--model tiny-t2i` (trained, shipped), `--component unet|vae_decoder`: the component's inputs recorded from the
pipeline on the calibration and on the held-out prompts (COCO rows for tiny-sdxl; tiny-t2i's own held-out domain
captions, by index, for tiny-t2i), the component's output MSE/SQNR on the held-out inputs (see bench/peers_models.py,
which also says how the peer's per-Linear/per-Conv2d choices map onto anna's units and bytes).

At the budgets S, S+0.01, S+0.02, S+0.05 and S+0.10 (S: anna's smallest feasible ratio) it compares anna's plan
(calibrate + analyze + search) with `mtq.auto_quantize` (FP8 E4M3 with per-channel weights and per-tensor
activations, or unquantized, per Linear and per Conv2d; gradient score with a loss `<r, f(x)>`, r Gaussian, whose
Fisher is J^T J, the output MSE's), constrained to the same bytes, and with ModelOpt's `FP8_DEFAULT_CFG` (all Linears
and Conv2ds FP8). The biases of the peer's FP8 layers are rounded to FP16, the storage its bytes are counted in.
Timing: anna's calibrate + analyze + search wall time against the peer's calibrate + score + solve for the same
budgets, in the same run. The last line is a JSON object (`worst_mse_ratio_vs_auto_quantize`,
`time_ratio_vs_auto_quantize`, per-budget rows).

    pip install -e ".[peers]"   # nvidia-modelopt
    OMP_NUM_THREADS=1 python bench/peers.py [--error-model linear|exact] [--out /tmp/anna-bench-peers]
    OMP_NUM_THREADS=1 python bench/peers.py --model tiny-sdxl --calib 1-200 --test 4001-4050 --out /tmp/peers-sdxl
    OMP_NUM_THREADS=1 python bench/peers.py --model tiny-t2i --component vae_decoder --calib 1-100 --test 101-200
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from peers_models import MODELS, PeerBytes, anna_assignment, initial_bits, load_case
from torch import nn

from anna.analyze.quantizer import UnitQuantizer
from anna.analyze.stage import analyze, load_analysis
from anna.calibrate import calibrate, load_stats
from anna.options.registry import FP16
from anna.search import search

OFFSETS = (0.0, 0.01, 0.02, 0.05, 0.10)
# FP8 E4M3, weights per output channel, activations per tensor: the format anna's fp8 options store, on Linears and
# Conv2ds only. Without `parent_class`, `mtq.quantize` with "*input_quantizer" also quantizes the inputs of ModelOpt's
# QuantLayerNorm (51 LayerNorms in the tiny UNets), which no byte pays for and no anna plan has (bench/peers_numerics.py
# on tiny-t2i's UNet: all-FP8 MSE 4.97e-4 with them, 5.027e-4 without, as auto_quantize's all-FP8 plan measures:
# auto_quantize leaves them off either way).
LAYERS = ("nn.Linear", "nn.Conv2d")
FP8_PER_CHANNEL = {
    "quant_cfg": [
        {"quantizer_name": "*", "enable": False},
        *({"quantizer_name": "*weight_quantizer", "parent_class": c, "cfg": {"num_bits": (4, 3), "axis": 0}}
          for c in LAYERS),
        *({"quantizer_name": "*input_quantizer", "parent_class": c, "cfg": {"num_bits": (4, 3), "axis": None}}
          for c in LAYERS),
    ],
    "algorithm": "max",
}


def embed(model, module: nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model.forward(module, b) for b in model.batches])


def scores(ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
    mse = float((out.double() - ref.double()).pow(2).mean())
    signal = float(ref.double().pow(2).mean())
    return {"mse": mse, "sqnr_db": 10 * math.log10(signal / mse) if mse > 0 else math.inf}


def peer_fp8_linears(state: dict) -> set[str]:
    """The Linears and Conv2ds that auto_quantize's best recipe quantizes."""
    out = set()
    for key, recipe in state["best"]["recipe"].items():
        if not str(recipe).startswith("NONE"):
            out.add(key.removesuffix(".quant_recipe"))
    return out


def round_biases_fp16(module: nn.Module, names: set[str]) -> None:
    """Round the biases of the peer's FP8 layers to FP16 values in place: the bytes it is charged for (anna's
    accounting, 2 per bias parameter) hold an FP16 bias, as anna's checkpoint stores it. On tiny-sdxl's random FP32
    weights this alone was the ~1% gap between the two quantizations of one plan (bench/peers_numerics.py)."""
    with torch.no_grad():
        for name in names:
            bias = getattr(module.get_submodule(name), "bias", None)
            if bias is not None:
                bias.copy_(bias.to(torch.float16).to(bias.dtype))


def predicted_mse(analysis, plan: dict[str, str]) -> float | None:
    """anna's error-model prediction for a plan (None when the plan uses an option outside the analysed bag)."""
    em = analysis.error_model
    options = [plan.get(u, FP16) for u in em.units]
    if any(o not in em.options for o in options):
        return None
    return float(em.predict([em.options.index(o) for o in options]))


def run_anna(calib, heldout, ref, out: Path, error_model: str, bag: list[str] | None = None,
             predicted: bool = False, probes: int | None = None) -> dict:
    run_dir = out / "anna"
    shutil.rmtree(run_dir, ignore_errors=True)
    times = {}
    t0 = time.perf_counter()
    calibrate(calib, run_dir, cache_samples=len(calib.batches), progress=False)
    times["calibrate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    analyze(run_dir, model=calib, bag=bag, validate=0, progress=False, echo=None, error_model=error_model,
            **({"probes": probes} if probes else {}))
    times["analyze"] = time.perf_counter() - t0
    analysis = load_analysis(run_dir)
    smallest = analysis.size_ratio(analysis.sizes.argmin(1))
    start = math.ceil(smallest * 10000) / 10000
    ratios = [round(start + o, 4) for o in OFFSETS]
    t0 = time.perf_counter()
    front = json.loads(search(run_dir, ratios, model=calib, baselines=False, measure_all=False, echo=None).read_text())
    times["search"] = time.perf_counter() - t0
    quantizer = UnitQuantizer(heldout.component(), load_stats(run_dir))
    rows = []
    for p in front["points"]:
        plan = json.loads((run_dir / p["plan"]).read_text())
        with quantizer({u: o for u, o in plan["units"].items() if u in quantizer.units}):
            got = scores(ref, embed(heldout, heldout.component()))
        rows.append({"budget": p["budget"], "bytes": p["bytes"], "size_ratio": p["size_ratio"],
                     "fp16_units": p["fp16_units"], "source": plan.get("source"), **got})
        if predicted:
            rows[-1]["predicted_mse"] = predicted_mse(analysis, plan["units"])
    return {"smallest_ratio": smallest, "ratios": ratios, "seconds": times, "rows": rows,
            "total_seconds": sum(times.values())}


def run_peer(calib, heldout, ref, ratios, total_fp16: int, out: Path, in_anna: bool = False) -> dict:
    """auto_quantize at each budget and FP8_DEFAULT_CFG. With `in_anna`, each peer plan is also applied with anna's
    quantizer (`anna_assignment`: anna's options and calibration, the same bytes; written to OUT/peer_plan_N.json)
    and measured on the held-out inputs: that separates the plan (which units stay FP16) from how units are
    quantized."""
    warnings.filterwarnings("ignore")
    import modelopt.torch.quantization as mtq

    base = calib.component()
    accounting = PeerBytes(base, total_fp16)
    gen = torch.Generator().manual_seed(0)

    def loss(output: torch.Tensor, _batch) -> torch.Tensor:
        return (output * torch.randn(output.shape, generator=gen)).sum()

    ckpt = out / "auto_quantize.pt"
    ckpt.unlink(missing_ok=True)
    rows, seconds = [], 0.0
    for ratio in ratios:
        budget = int(math.floor(ratio * total_fp16))
        bits = initial_bits(accounting, total_fp16, budget)
        for _attempt in range(40):
            bits = max(8.0, min(16.0, bits))
            module = copy.deepcopy(base)
            t0 = time.perf_counter()
            module, state = mtq.auto_quantize(
                module, constraints={"effective_bits": bits}, quantization_formats=[FP8_PER_CHANNEL],
                data_loader=calib.batches, forward_step=lambda m, b: calib.forward(m, b), loss_func=loss,
                num_calib_steps=len(calib.batches), num_score_steps=len(calib.batches), verbose=False,
                checkpoint=str(ckpt),
            )
            seconds += time.perf_counter() - t0
            fp8 = peer_fp8_linears(state)
            if accounting.of(fp8) <= budget or bits <= 8.0:
                break
            bits -= 0.02
        round_biases_fp16(module, fp8)
        got = scores(ref, embed(heldout, module))
        rows.append({"budget": ratio, "bytes": accounting.of(fp8), "size_ratio": accounting.of(fp8) / total_fp16,
                     "effective_bits": bits, "fp16_linears": len(accounting.numel) - len(fp8), **got})
        if in_anna:
            quantizer = UnitQuantizer(heldout.component(), load_stats(out / "anna"))
            plan = anna_assignment(heldout.component(), fp8)
            with quantizer(plan):
                rows[-1]["in_anna"] = scores(ref, embed(heldout, heldout.component()))
            rows[-1]["in_anna"]["options"] = dict(Counter(plan.values()).most_common())
            rows[-1]["in_anna"]["predicted_mse"] = predicted_mse(load_analysis(out / "anna"), plan)
            (out / f"peer_plan_{len(rows)}.json").write_text(json.dumps({"budget": ratio, "units": plan}, indent=1))
    module = copy.deepcopy(base)
    t0 = time.perf_counter()
    module = mtq.quantize(module, mtq.FP8_DEFAULT_CFG, forward_loop=lambda m: [calib.forward(m, b) for b in
                                                                                 calib.batches])
    fp8_default_seconds = time.perf_counter() - t0
    round_biases_fp16(module, set(accounting.numel))
    default = {**scores(ref, embed(heldout, module)), "seconds": fp8_default_seconds,
               "size_ratio": accounting.of(set(accounting.numel)) / total_fp16}
    return {"rows": rows, "seconds": seconds, "fp8_default_cfg": default}


def reused_peer(earlier: Path, result: dict, ratios: list[float], out: Path) -> dict:
    """The peer's figures of an earlier run (EARLIER/result.json) of the same case and budgets; the peer plans'
    predictions are redone with this run's analysis (the plans are EARLIER/peer_plan_N.json)."""
    old = json.loads((earlier / "result.json").read_text())
    for key in ("model", "calib_rows", "test_rows", "data"):
        if old.get(key) != result.get(key):
            raise SystemExit(f"--peer-from {earlier}: another {key} ({old.get(key)} != {result.get(key)})")
    if old["anna"]["ratios"] != ratios:
        raise SystemExit(f"--peer-from {earlier}: other budgets ({old['anna']['ratios']} != {ratios})")
    peer = old["peer"]
    analysis = load_analysis(out / "anna")
    for n, row in enumerate(peer["rows"], 1):
        if "in_anna" in row:
            plan = json.loads((earlier / f"peer_plan_{n}.json").read_text())["units"]
            row["in_anna"]["predicted_mse"] = predicted_mse(analysis, plan)
    result["peer_from"] = str(earlier)
    return peer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/anna-bench-peers")
    ap.add_argument("--error-model", default="linear", choices=["linear", "exact"])
    ap.add_argument("--model", default="minilm", choices=MODELS)
    ap.add_argument("--component", default="unet", choices=["unet", "vae_decoder"], help="tiny-sdxl/tiny-t2i only")
    ap.add_argument("--calib", default=None, help="calibration rows (default: 1-200; tiny-t2i 1-100)")
    ap.add_argument("--test", default=None, help="held-out rows (default: 4001-4500; tiny-t2i 101-200)")
    ap.add_argument("--batch-size", type=int, default=64, help="component inputs per batch (tiny-sdxl, tiny-t2i)")
    ap.add_argument("--calib-calls", type=int, default=None,
                    help="component calls kept per calibration prompt, rotating over the steps (default: all)")
    ap.add_argument("--peer-in-anna", action=argparse.BooleanOptionalAction, default=None,
                    help="also measure each peer plan quantized by anna (default: on, except for minilm)")
    ap.add_argument("--probes", type=int, default=None, help="the linear error model's probes (default: anna's)")
    ap.add_argument("--bag", default=None, help="anna's options, comma-separated (default: the registry's bag)")
    ap.add_argument("--peer-from", default=None, metavar="OUT",
                    help="reuse the peer's figures of an earlier run's OUT folder (its result.json and peer plans) on "
                         "the same model, rows and budgets, instead of running ModelOpt again (bag experiments)")
    args = ap.parse_args()
    t2i = args.model == "tiny-t2i"
    calib_rows = args.calib or ("1-100" if t2i else "1-200")
    test_rows = args.test or ("101-200" if t2i else "4001-4500")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    case = load_case(args.model, args.component, calib_rows, test_rows, args.batch_size, args.calib_calls)
    calib, heldout, total_fp16 = case.calib, case.heldout, case.total_fp16
    ref = embed(heldout, heldout.component())
    result: dict = {"model": case.name, "calib_rows": calib_rows, "test_rows": test_rows,
                    "error_model": args.error_model, "bag": args.bag, "probes": args.probes}
    if args.model != "minilm":
        result["data"] = case.data
    in_anna = args.model != "minilm" if args.peer_in_anna is None else args.peer_in_anna
    anna = run_anna(calib, heldout, ref, out, args.error_model, args.bag.split(",") if args.bag else None, in_anna,
                    args.probes)
    try:
        if args.peer_from:
            peer = reused_peer(Path(args.peer_from), result, anna["ratios"], out)
        else:
            peer = run_peer(calib, heldout, ref, anna["ratios"], total_fp16, out, in_anna)
    except ImportError as e:
        result.update(anna=anna, peer_error=f"ModelOpt unavailable: {e} (pip install -e '.[peers]')")
        print(json.dumps(result))
        return
    ratios = [a["mse"] / p["mse"] for a, p in zip(anna["rows"], peer["rows"], strict=True)]
    print(f"{'budget':>8} {'anna size':>9} {'anna SQNR':>9} {'anna MSE':>10} {'peer size':>9} {'peer SQNR':>9} "
          f"{'peer MSE':>10} {'ratio':>6}")
    for a, p, r in zip(anna["rows"], peer["rows"], ratios, strict=True):
        print(f"{a['budget']:>8.4f} {a['size_ratio']:>9.4f} {a['sqnr_db']:>9.2f} {a['mse']:>10.3e} "
              f"{p['size_ratio']:>9.4f} {p['sqnr_db']:>9.2f} {p['mse']:>10.3e} {r:>6.3f}")
    if "in_anna" in peer["rows"][0]:
        rerun = [p["in_anna"] for p in peer["rows"]]
        print("the peer's plans quantized by anna (anna's options and calibration, same bytes): SQNR "
              + ", ".join(f"{q['sqnr_db']:.2f}" for q in rerun) + " dB; anna's MSE over theirs "
              + ", ".join(f"{a['mse'] / q['mse']:.3f}" for a, q in zip(anna["rows"], rerun, strict=True)))
        print("anna's predicted MSE, its plan / the peer's plan: " + ", ".join(
            f"{a['predicted_mse']:.3e} / " + ("n/a" if q["predicted_mse"] is None else f"{q['predicted_mse']:.3e}")
            for a, q in zip(anna["rows"], rerun, strict=True)))
    d = peer["fp8_default_cfg"]
    print(f"ModelOpt FP8_DEFAULT_CFG: size {d['size_ratio']:.4f}, SQNR {d['sqnr_db']:.2f} dB, MSE {d['mse']:.3e}")
    print(f"time: anna {anna['total_seconds']:.1f} s {anna['seconds']}, auto_quantize {peer['seconds']:.1f} s")
    result.update(
        anna=anna,
        peer=peer,
        worst_mse_ratio_vs_auto_quantize=max(ratios),
        time_ratio_vs_auto_quantize=anna["total_seconds"] / peer["seconds"],
    )
    (out / "result.json").write_text(json.dumps(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
