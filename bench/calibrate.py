"""Benchmark: `calibrate` against plain `generate` on the same model, prompts and settings, in one run.

Each measurement runs in a fresh subprocess (so peak RSS, from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, is the
process's own): the child imports anna (both entry points, outside the timing), loads the model, warms the pipeline
up on one prompt (both kinds alike), then times either ``generate_images`` or ``calibrate`` (UNet, checkpointing and
artifact writes included). The children
alternate ``--repeats`` times; the medians are compared. Targets: calibrate time <= 1.5x generate, and peak RSS <=
1.2x generate's plus the histogram state. The last line printed is a JSON object with every figure.

    python bench/calibrate.py [--model tiny-sdxl] [--prompts 16] [--steps N] [--threads 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco2014_val_captions.tsv"


def child(
    kind: str, model_spec: str, n_prompts: int, steps: int | None, threads: int, run_dir: str, buffer_mb: float
) -> dict:
    """Run one measurement in this process and return its figures."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from dataclasses import replace

    from anna.adapters import load_model
    from anna.calibrate import calibrate, load_run
    from anna.generate import generate_images
    from anna.prompts import load_prompts

    prompts = load_prompts(f"{COCO}:1-{n_prompts}")
    model = load_model(model_spec)
    settings = model.defaults if steps is None else replace(model.defaults, steps=steps)
    generate_images(model, prompts[:1], settings, seed=1000, progress=False)  # warm-up, both kinds alike
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0, c0 = time.perf_counter(), time.process_time()
    extra: dict = {}
    if kind == "generate":
        generate_images(model, prompts, settings, seed=0, progress=False)
    else:
        calibrate(model, run_dir, prompts=prompts, settings=settings, seed=0, progress=False, buffer_mb=buffer_mb)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    if kind == "calibrate":
        summary = load_run(run_dir)["summary"]
        extra = {k: summary[k] for k in ("histogram_bytes", "cached_bytes", "units", "observed")}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        extra["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return {
        "kind": kind,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_after_load_bytes": rss_before,
        "steps": settings.steps,
        "height": settings.height,
        **extra,
    }


def _spawn(kind: str, args: argparse.Namespace, run_dir: str) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--model",
        args.model,
        "--prompts",
        str(args.prompts),
        "--threads",
        str(args.threads),
        "--buffer-mb",
        str(args.buffer_mb),
        "--run-dir",
        run_dir,
    ]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sdxl")
    parser.add_argument("--prompts", type=int, default=16, help="COCO captions 1..N")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (model default when omitted)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per child (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--buffer-mb", type=float, default=32.0, help="calibrate's staging memory for small activations"
    )
    parser.add_argument("--child", choices=("generate", "calibrate"), help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        figures = child(args.child, args.model, args.prompts, args.steps, args.threads, args.run_dir, args.buffer_mb)
        print(json.dumps(figures))
        return

    runs: dict[str, list[dict]] = {"generate": [], "calibrate": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for kind in ("generate", "calibrate"):
                runs[kind].append(_spawn(kind, args, str(Path(tmp) / f"run{r}")))
                print(
                    f"{kind:>9} #{r}: {runs[kind][-1]['seconds']:.3f} s, "
                    f"peak RSS {runs[kind][-1]['peak_rss_bytes'] / 2**20:.1f} MB",
                    flush=True,
                )

    def med(kind: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[kind])

    gen_s, cal_s = med("generate", "seconds"), med("calibrate", "seconds")
    gen_cpu, cal_cpu = med("generate", "cpu_seconds"), med("calibrate", "cpu_seconds")
    gen_rss, cal_rss = med("generate", "peak_rss_bytes"), med("calibrate", "peak_rss_bytes")
    hist = runs["calibrate"][0]["histogram_bytes"]
    rss_budget = 1.2 * gen_rss + hist
    result = {
        "model": args.model,
        "prompts": args.prompts,
        "steps": runs["generate"][0]["steps"],
        "height": runs["generate"][0]["height"],
        "threads": args.threads,
        "repeats": args.repeats,
        "buffer_mb": args.buffer_mb,
        "generate_s": gen_s,
        "calibrate_s": cal_s,
        "time_ratio": cal_s / gen_s,
        "generate_cpu_s": gen_cpu,
        "calibrate_cpu_s": cal_cpu,
        "cpu_time_ratio": cal_cpu / gen_cpu,
        "time_target": 1.5,
        "time_target_met": cal_s <= 1.5 * gen_s,
        "generate_peak_rss_mb": gen_rss / 2**20,
        "calibrate_peak_rss_mb": cal_rss / 2**20,
        "rss_ratio": cal_rss / gen_rss,
        "rss_after_load_mb": med("generate", "rss_after_load_bytes") / 2**20,
        "histogram_state_mb": hist / 2**20,
        "rss_budget_mb": rss_budget / 2**20,
        "rss_target_met": cal_rss <= rss_budget,
        "cached_inputs_mb": runs["calibrate"][0]["cached_bytes"] / 2**20,
        "units": runs["calibrate"][0]["units"],
        "generate_s_all": [x["seconds"] for x in runs["generate"]],
        "calibrate_s_all": [x["seconds"] for x in runs["calibrate"]],
    }
    print(
        f"time: calibrate {cal_s:.3f} s vs generate {gen_s:.3f} s = {result['time_ratio']:.2f}x (target <= 1.5x); "
        f"CPU time {cal_cpu:.3f} s vs {gen_cpu:.3f} s = {result['cpu_time_ratio']:.2f}x"
    )
    print(
        f"peak RSS: calibrate {cal_rss / 2**20:.1f} MB vs generate {gen_rss / 2**20:.1f} MB = "
        f"{result['rss_ratio']:.3f}x; budget 1.2x + histograms ({hist / 2**20:.1f} MB) = {rss_budget / 2**20:.1f} MB"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
