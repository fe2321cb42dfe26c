"""The `anna` command line. Every stage reads and writes a run directory; see DESIGN.md for the contracts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from anna.checks import MAX_SEED, MAX_STEPS, BoundedFloat, ImageSide
from anna.errors import AnnaError

STEPS = click.IntRange(1, MAX_STEPS)
SIDE = ImageSide()
SEED = click.IntRange(0, MAX_SEED)
COUNT = click.IntRange(0, 100_000)
POSITIVE = click.IntRange(1, 100_000)
GUIDANCE = BoundedFloat(0, 1000)
NONNEG = BoundedFloat(0)
FINITE = BoundedFloat()


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    import diffusers
    import huggingface_hub
    import transformers

    transformers.logging.set_verbosity_error()
    diffusers.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()  # offline retries are reported once, as a metric's reason


def _settings(model, steps, guidance, height, width):
    from dataclasses import replace

    given = dict(steps=steps, guidance=guidance, height=height, width=width)
    return replace(model.defaults, **{k: v for k, v in given.items() if v is not None})


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="anna")
def cli() -> None:
    """anna: compress a diffusion model (or any PyTorch model) to a size budget with the least loss of quality.

    Models (--model): tiny-sdxl (built in, offline), sdxl (meta device, sizes only), a Hugging Face hub id such as
    stabilityai/sdxl-turbo, or a local diffusers folder.
    """


@cli.command()
@click.option("--model", "-m", "model_spec", required=True, help="tiny-sdxl, sdxl, a hub id or a local diffusers dir.")
@click.option("--component", "-c", default=None, help="unet (default), text_encoder, text_encoder_2 or vae_decoder.")
@click.option("--include", multiple=True, help="Glob of unit names to keep (repeatable).")
@click.option("--exclude", multiple=True, help="Glob of unit names to drop (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(model_spec: str, component: str | None, include: tuple[str, ...], exclude: tuple[str, ...], as_json: bool):
    """List the units of a component: kind, parameters, FP16 bytes and bytes under every option, with totals."""
    from anna.adapters import load_model
    from anna.artifacts import FORMAT_VERSION
    from anna.inventory import build_inventory
    from anna.options import option_names

    inv = build_inventory(load_model(model_spec), component, include, exclude)
    if as_json:
        click.echo(json.dumps({"format_version": FORMAT_VERSION, **inv.to_json()}, indent=1))
        return
    opts = option_names()
    width = max([len(u.name) for u in inv.units] + [10])
    header = f"{'unit':<{width}}  {'kind':<9} {'params':>12} " + " ".join(f"{o:>16}" for o in opts)
    click.echo(header)
    click.echo("-" * len(header))
    for u in inv.units:
        click.echo(f"{u.name:<{width}}  {u.kind:<9} {u.params:>12,} "
                   + " ".join(f"{u.bytes[o]:>16,}" if o in u.bytes else f"{'-':>16}" for o in opts))
    click.echo("-" * len(header))
    # an option that cannot quantize some unit (no size there) has no total
    sums = {o: inv.base_bytes + sum(u.bytes[o] for u in inv.units) for o in opts
            if all(o in u.bytes for u in inv.units)}
    click.echo(
        f"{'total (all units in option)':<{width}}  {'':<9} {inv.total_params:>12,} "
        + " ".join(f"{sums[o]:>16,}" if o in sums else f"{'-':>16}" for o in opts)
    )
    click.echo(
        f"{'size ratio':<{width}}  {'':<9} {'':>12} "
        + " ".join(f"{sums[o] / inv.total_bytes_fp16:>16.4f}" if o in sums else f"{'-':>16}" for o in opts)
    )
    kinds = {k: sum(1 for u in inv.units if u.kind == k) for k in ("conv", "attention", "linear")}
    click.echo(
        f"{inv.model} / {inv.component}: {len(inv.units)} units ({', '.join(f'{v} {k}' for k, v in kinds.items())}); "
        f"{inv.total_params:,} parameters; {inv.total_bytes_fp16:,} bytes in FP16 "
        f"({inv.base_bytes:,} outside units)"
    )


@cli.command()
@click.option("--model", "-m", "model_spec", required=True, help="tiny-sdxl, a hub id or a local diffusers folder.")
@click.option("--prompts", required=True, help="Text file, TSV with a caption column (FILE.tsv:A-B) or hf:DATASET[:N].")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the PNGs.")
@click.option("--checkpoint", default=None, help="A quantized checkpoint to generate with.")
@click.option("--steps", type=STEPS, default=None, help="Sampling steps (model default when omitted).")
@click.option("--guidance", type=GUIDANCE, default=None, help="Classifier-free guidance scale.")
@click.option("--height", type=SIDE, default=None)
@click.option("--width", type=SIDE, default=None)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Prompt i uses seed + i.")
def generate(model_spec, prompts, out, checkpoint, steps, guidance, height, width, seed):
    """Generate one PNG per prompt. The same seed gives byte-identical files."""
    from anna.adapters import load_model
    from anna.checks import checkpoint_folders, model_not_a_file, writable_folder
    from anna.generate import generate_to_dir
    from anna.prompts import load_prompts

    texts = load_prompts(prompts)
    model_not_a_file(model_spec)
    if checkpoint:
        checkpoint_folders([checkpoint])
    writable_folder(out, "--out")
    model = load_model(model_spec)
    model.require_weights("generate")
    if checkpoint:
        from anna.export.checkpoint import load_checkpoint_into
        from anna.export.onnx_runtime import is_onnx_checkpoint, load_onnx_checkpoint_into

        (load_onnx_checkpoint_into if is_onnx_checkpoint(checkpoint) else load_checkpoint_into)(model, checkpoint)
    paths = generate_to_dir(model, texts, out, _settings(model, steps, guidance, height, width), seed)
    click.echo(f"wrote {len(paths)} images to {Path(out)}")


@cli.command(name="calibrate")
@click.option("--model", "-m", "model_spec", required=True, help="tiny-sdxl, a hub id or a local diffusers folder.")
@click.option("--prompts", "-p", required=True, help="Text file, TSV with a caption column, or hf:DATASET[:N].")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory (one component)")
@click.option("--component", "-c", default=None, help="unet (default), text_encoder, text_encoder_2 or vae_decoder.")
@click.option("--steps", type=STEPS, default=None, help="Sampling steps (model default when omitted; SDXL: 20).")
@click.option("--guidance", type=GUIDANCE, default=None, help="Classifier-free guidance scale (SDXL: 8.0).")
@click.option("--height", type=SIDE, default=None, help="Image height in pixels (SDXL: 1024).")
@click.option("--width", type=SIDE, default=None, help="Image width in pixels (SDXL: 1024).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Prompt i uses seed + i, as in generate.")
@click.option("--cache-samples", type=COUNT, default=8, show_default=True, help="Component inputs kept for later.")
@click.option("--cache-steps", default="all", show_default=True, help="Steps to cache inputs at: 'all' or e.g. 0,5,10.")
@click.option("--cache-mb", type=NONNEG, default=None, help="Byte limit of the input cache in MB (none by default).")
@click.option("--include", multiple=True, help="Glob of unit names to observe (repeatable).")
@click.option("--exclude", multiple=True, help="Glob of unit names to skip (repeatable).")
@click.option("--checkpoint-seconds", type=NONNEG, default=10.0, show_default=True,
              help="Save interval; 0: per prompt.")
@click.option("--buffer-mb", type=BoundedFloat(0, 2**20), default=32.0,
              show_default=True, help="Staging of small activations; 0: none.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def calibrate_cmd(model_spec, prompts, run_dir, component, steps, guidance, height, width, seed, cache_samples,
                  cache_steps, cache_mb, include, exclude, checkpoint_seconds, buffer_mb, quiet):
    """Run the pipeline on the prompts and record, for every unit of one component, activation statistics (min, max,
    absmax, percentiles 1/5/10/90/95/99 from bounded-memory histograms), per-channel weight absmax, and a few of the
    component's own inputs. Writes RUN/run.json and RUN/calibration/. Resumes an interrupted run with the same settings;
    a finished one returns at once."""
    import time

    from anna.adapters import load_model
    from anna.calibrate import calibrate, load_run
    from anna.checks import bounded_steps, model_not_a_file, writable_folder
    from anna.prompts import load_prompts

    steps_list = None
    if cache_steps.strip().lower() != "all":
        try:
            steps_list = [int(s) for s in cache_steps.split(",") if s.strip()]
        except ValueError:
            raise AnnaError(f"--cache-steps must be 'all' or a comma list of integers, not '{cache_steps}'") from None
        bounded_steps(steps_list, "--cache-steps", first=0)
    texts = load_prompts(prompts)
    model_not_a_file(model_spec)
    writable_folder(run_dir)
    model = load_model(model_spec)
    model.require_weights("calibrate")
    t0 = time.perf_counter()
    calibrate(model, run_dir, component=component, prompts=texts,
              settings=_settings(model, steps, guidance, height, width), seed=seed, cache_samples=cache_samples,
              progress=not quiet, include=include, exclude=exclude, cache_steps=steps_list, cache_mb=cache_mb,
              checkpoint_seconds=checkpoint_seconds, buffer_mb=buffer_mb, log=lambda m: click.echo(m, err=True))
    record = load_run(run_dir)
    s = record["summary"]
    click.echo(f"{model.name} / {record['component']}: {s['observed']} of {s['units']} units observed, "
               f"{len(texts)} prompts, {s['cached_samples']} cached inputs ({s['cached_bytes'] / 2**20:.1f} MB), "
               f"histograms {s['histogram_bytes'] / 2**20:.1f} MB, {time.perf_counter() - t0:.1f} s")
    if s["unobserved"]:
        click.echo(f"warning: {len(s['unobserved'])} units never ran: {', '.join(s['unobserved'][:5])}", err=True)
    for nf in s["nonfinite"]:
        click.echo(f"warning: {nf['count']} non-finite values at {nf['unit']} ({nf['activation']}), "
                   f"first in item {nf['first_item']}; excluded from the statistics", err=True)
    click.echo(f"wrote {Path(run_dir) / 'calibration'}")


@cli.command(name="analyze")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="A calibrated run directory.")
@click.option("--bag", default=None, help="Comma-separated options (default: fp16, the four FP8 variants and "
              "fp8-absmax-fp16math).")
@click.option("--sketch", "sketch_k", type=click.IntRange(0, 65536), default=None,
              help="CountSketch size for the cross terms; 0: exact deltas. Default: exact when they fit in 256 MB, "
              "else 1024.")
@click.option("--fisher-samples", type=COUNT, default=1, show_default=True, help="Samples for the Fisher baseline.")
@click.option("--validate", type=COUNT, default=30, show_default=True,
              help="Plans near the front to validate on (0: skip).")
@click.option("--error-model", type=click.Choice(["linear", "exact"]), default="linear", show_default=True,
              help="linear: a few backward passes per sample and one local run per unit-option; exact: one component "
              "run per unit, option and sample.")
@click.option("--probes", type=POSITIVE, default=None,
              help="Random output projections (linear model; default 4, more on UNets: see README).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def analyze_cmd(run_dir, bag, sketch_k, fisher_samples, validate, error_model, probes, quiet):
    """Build the error model: each unit x option's output delta on the cached inputs, the quadratic form with its
    cross terms, and its validation (Spearman, R^2) on plans near the front. Resumable."""
    from anna.analyze.stage import analyze
    from anna.checks import writable_folder

    writable_folder(run_dir, create=False)
    analyze(run_dir, bag=bag.split(",") if bag else None, sketch_k=sketch_k, fisher_samples=fisher_samples,
            validate=validate, progress=not quiet, echo=click.echo, error_model=error_model, probes=probes)


@cli.command(name="search")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="An analysed run directory.")
@click.option("--size", type=FINITE, default=None, help="One budget as a size ratio of FP16, e.g. 0.501.")
@click.option("--sizes", default=None, help="A sweep START:STOP:STEP, e.g. 0.50:0.60:0.01.")
@click.option("--no-measure", is_flag=True, help="Skip measuring each plan's real MSE on the cached inputs.")
@click.option("--no-baselines", is_flag=True, help="Skip the uniform/greedy/Fisher/random baselines.")
@click.option("--uncorrected", is_flag=True, help="Ignore the correction that validation fitted to the error model.")
@click.option("--polish", type=COUNT, default=0, show_default=True,
              help="Measured polish: the N most sensitive units of each plan try their other same-size options.")
@click.option("--margin", type=NONNEG, default=0.05, show_default=True,
              help="Measure anna's candidates predicted within this fraction of the best one.")
@click.option("--measure-rows", type=COUNT, default=64, show_default=True,
              help="Measure plans on the first cached inputs holding this many batch rows (0: all).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def search_cmd(run_dir, size, sizes, no_measure, no_baselines, uncorrected, polish, margin, measure_rows, quiet):
    """Solve for the plan of least predicted MSE under each budget (DP with cross terms): plans/*.json, front.json."""
    from anna.budgets import parse_sizes
    from anna.checks import writable_folder
    from anna.search import search

    ratios = parse_sizes(size, sizes)
    writable_folder(run_dir, create=False)
    path = search(run_dir, ratios, measure=not no_measure, baselines=not no_baselines, corrected=not uncorrected,
                  polish=polish, margin=margin, measure_rows=measure_rows, progress=not quiet, echo=click.echo)
    click.echo(f"wrote {path}")


@cli.command(name="evaluate")
@click.option("--model", "-m", "model_spec", required=True, help="tiny-sdxl, a hub id or a local diffusers folder.")
@click.option("--checkpoint", "checkpoints", multiple=True, help="Checkpoint folder (repeatable; safetensors or ONNX).")
@click.option("--prompts", "-p", required=True, help="Text file, TSV with a caption column (FILE.tsv:A-B), hf:DATASET.")
@click.option("--metrics", default="mse,clip,fid", show_default=True, help="Any of mse, clip, fid.")
@click.option("--steps", default=None, help="Comma-separated steps values, e.g. 1,2 (model default when omitted).")
@click.option("--guidance", type=GUIDANCE, default=None, help="Classifier-free guidance scale (model default).")
@click.option("--height", type=SIDE, default=None)
@click.option("--width", type=SIDE, default=None)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Prompt i uses seed + i, as in generate.")
@click.option("--clip-model", default=None, help="CLIP hub id or folder (default: the model's own, else OpenAI's).")
@click.option("--fid-weights", default=None, help="Inception state dict, or a TorchScript feature extractor file.")
@click.option("--fid-reference", default=None, type=click.Path(file_okay=False), help="Reference image folder for FID.")
@click.option("--component-calls", type=POSITIVE, default=16, show_default=True,
              help="Component calls kept for its MSE.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder for metrics.json and PNGs.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def evaluate_cmd(model_spec, checkpoints, prompts, metrics, steps, guidance, height, width, seed, clip_model,
                 fid_weights, fid_reference, component_calls, out, quiet):
    """MSE (images and component), CLIP score and FID of checkpoints against the original, per steps value.

    The published SDXL-Turbo split tests on COCO caption rows 1-100 (calibration: rows 1-50) at 1 and 2 steps:
    --prompts ../shared/data/coco2014_val_captions.tsv:1-100 --steps 1,2. A metric that cannot run (no weights
    offline) is null in metrics.json, with the reason beside it.
    """
    from anna.checks import bounded_steps, checkpoint_folders, existing_file, model_not_a_file, writable_folder
    from anna.evaluate.evaluate import EvalConfig, evaluate, parse_metrics, parse_steps
    from anna.prompts import load_prompts

    texts = load_prompts(prompts)
    model_not_a_file(model_spec)
    checkpoint_folders(checkpoints)
    existing_file(fid_weights, "--fid-weights")
    writable_folder(out, "--out")
    config = EvalConfig(
        metrics=parse_metrics(metrics), steps=bounded_steps(parse_steps(steps)) if steps else None, seed=seed,
        guidance=guidance,
        height=height, width=width, clip_model=clip_model, fid_weights=fid_weights, fid_reference=fid_reference,
        component_calls=component_calls,
    )
    result = evaluate(model_spec, list(checkpoints), texts, out, config, prompts_spec=prompts,
                      echo=print, progress=not quiet)
    click.echo(f"wrote {Path(out) / 'metrics.json'}: {len(result['entries'])} entries, "
               f"{len(result['original'])} original rows")


@cli.command(name="select")
@click.option("--eval", "eval_dir", required=True, type=click.Path(), help="Evaluation folder (or its metrics.json).")
@click.option("--max-fid-increase", type=FINITE, default=None, help="FID(checkpoint) - FID(original) at most this.")
@click.option("--min-clip-delta", type=FINITE, default=None, help="CLIP(checkpoint) - CLIP(original) at least this.")
@click.option("--max-mse", type=NONNEG, default=None, help="Image MSE vs the original (0-255 scale) at most this.")
@click.option("--max-accuracy-drop", type=FINITE, default=None,
              help="Attribute accuracy(original) - accuracy(checkpoint) at most this (needs accuracy in metrics.json).")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False), help="Where to write selected.json.")
def select_cmd(eval_dir, max_fid_increase, min_clip_delta, max_mse, max_accuracy_drop, out):
    """Pick the smallest checkpoint that meets every threshold at every evaluated steps value."""
    from anna.evaluate.select import Thresholds, select_to_file

    sel = select_to_file(eval_dir, Thresholds(max_fid_increase, min_clip_delta, max_mse, max_accuracy_drop), out)
    click.echo(f"selected {sel.chosen.checkpoint}: {sel.reason}")
    click.echo(f"wrote {out}")


@cli.command(name="report")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--max-grids", type=COUNT, default=12, show_default=True, help="Prompts shown as image grids.")
def report_cmd(run_dir, max_grids):
    """Write RUN/report.html: Pareto plot, predicted vs measured MSE, metrics table, selected plan, image grids."""
    from anna.checks import writable_folder
    from anna.report import build_report

    writable_folder(run_dir, create=False)
    click.echo(f"wrote {build_report(run_dir, max_grids=max_grids)}")


@cli.command(name="export")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False), help="Calibration run directory.")
@click.option("--plan", "plan_path", required=True, help="Plan JSON, full or short form (also looked up in --run).")
@click.option("--format", "fmt", default="safetensors", show_default=True, help="safetensors or onnx-qdq.")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Checkpoint folder to write.")
def export_cmd(run_dir, plan_path, fmt, out):
    """Apply a plan to the run's model with its calibration statistics and write a checkpoint (model.safetensors +
    plan.json for safetensors)."""
    from anna.checks import writable_folder
    from anna.export.formats import export

    writable_folder(out, "--out")
    export(fmt, run_dir, plan_path, out)
    click.echo(f"wrote {Path(out)}")


@cli.command(name="run")
@click.option("--model", "-m", "model_spec", default="tiny-t2i", show_default=True, help="Model to compress.")
@click.option("--run", "run_dir", default=None, help="Run directory [default: runs/<model>].")
@click.option("--prompts", default=None, help="Prompt source (default: the model's own or anna's built-in prompts).")
@click.option("--calib", type=POSITIVE, default=8, show_default=True, help="Calibrate on the first N prompts.")
@click.option("--test", type=POSITIVE, default=16, show_default=True,
              help="Evaluate on the first M prompts (the published SDXL-Turbo split is --calib 50 --test 100).")
@click.option("--component", "-c", default="unet", show_default=True)
@click.option("--sizes", default="0.50:0.60:0.01", show_default=True, help="Budget sweep START:STOP:STEP.")
@click.option("--steps", default="1,2", show_default=True, help="Sampling steps to evaluate.")
@click.option("--metrics", default="mse,clip,fid", show_default=True)
@click.option("--cache-samples", type=COUNT, default=4, show_default=True, help="Cached component inputs.")
@click.option("--validate", type=COUNT, default=30, show_default=True, help="Plans validating the error model.")
@click.option("--max-mse", type=NONNEG, default=None,
              help="Selection: image MSE (0-255) at most this, at every steps value. With no threshold given: "
                   "tiny-t2i's accuracy/CLIP/FID margins, else --max-mse 30 (PSNR >= 33 dB).")
@click.option("--max-accuracy-drop", type=FINITE, default=None, help="Selection: attribute accuracy drop at most this.")
@click.option("--max-fid-increase", type=FINITE, default=None, help="Selection: FID increase at most this.")
@click.option("--min-clip-delta", type=FINITE, default=None, help="Selection: CLIP change at least this (e.g. -0.5).")
@click.option("--clip-model", default=None, help="CLIP hub id or local folder for the CLIP score.")
@click.option("--fid-weights", default=None, help="Local Inception weights / feature extractor for FID.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def run_cmd(model_spec, run_dir, prompts, calib, test, component, sizes, steps, metrics, cache_samples, validate,
            max_mse, max_accuracy_drop, max_fid_increase, min_clip_delta, clip_model, fid_weights, quiet):
    """Every stage in one command: calibrate, analyze, search (a sweep), export, evaluate (1 and 2 steps), select
    and report. With no arguments it runs offline on tiny-t2i in a few minutes and prints the report's path."""
    from anna.budgets import parse_sizes
    from anna.checks import bounded_steps, existing_file, model_not_a_file, writable_folder
    from anna.evaluate.evaluate import parse_metrics, parse_steps
    from anna.prompts import load_prompts
    from anna.run import RunConfig, run_all

    ratios, step_counts = parse_sizes(sizes=sizes), bounded_steps(parse_steps(steps))
    metric_names = parse_metrics(metrics)
    if prompts is not None:
        load_prompts(prompts)
    model_not_a_file(model_spec)
    existing_file(fid_weights, "--fid-weights")
    writable_folder(run_dir or f"runs/{model_spec.replace('/', '--')}")
    cfg = RunConfig(
        model=model_spec, run_dir=run_dir or f"runs/{model_spec.replace('/', '--')}", prompts=prompts, calib=calib,
        test=test, component=component, sizes=tuple(ratios), steps=step_counts, metrics=metric_names,
        cache_samples=cache_samples,
        validate=validate, max_mse=max_mse, max_fid_increase=max_fid_increase, min_clip_delta=min_clip_delta,
        clip_model=clip_model, fid_weights=fid_weights, max_accuracy_drop=max_accuracy_drop,
    )
    run_all(cfg, echo=click.echo, progress=not quiet)


def main(argv: list[str] | None = None) -> None:
    """Entry point; faults become one line on stderr (see `anna.boundary`)."""
    from anna.boundary import run_cli

    run_cli(cli, argv, before=_quiet_libraries)


if __name__ == "__main__":
    main()
