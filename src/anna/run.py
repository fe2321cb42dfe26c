"""`anna run`: every stage in one command, with defaults that finish offline on tiny-t2i in a few minutes.

calibrate -> analyze -> search (a sweep of budgets) -> export (one checkpoint per plan, plus the all-FP8 plan)
-> evaluate (1 and 2 steps) -> select -> report. A model that ships its own judges (tiny-t2i: domain prompts, CLIP,
FID features, attribute classifier, thresholds) uses them unless told otherwise. Each stage writes into the run
folder and resumes from what is already there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anna.errors import AnnaError
from anna.runfolder import RunFolder

Echo = Callable[[str], Any]

# Built-in prompts for offline runs without a prompt file (anna's own, everyday scenes).
BUILTIN_PROMPTS = (
    "A red bicycle leaning against a brick wall.",
    "Two dogs playing with a ball on a sandy beach.",
    "A bowl of fresh fruit on a wooden kitchen table.",
    "A city street at night with glowing shop signs.",
    "A small sailboat on a calm lake at sunrise.",
    "A cat sleeping on a windowsill next to a plant.",
    "A plate of pasta with tomato sauce and basil.",
    "A snowy mountain road with a single blue car.",
    "A child flying a kite in a green park.",
    "An old train crossing a stone bridge.",
    "A cup of coffee beside an open book.",
    "A group of people waiting at a bus stop in the rain.",
    "A giraffe standing under a tall tree.",
    "A bathroom with white tiles and a round mirror.",
    "A pizza with mushrooms on a baking tray.",
    "A man riding a horse across a dry field.",
)


@dataclass(frozen=True)
class RunConfig:
    """What `anna run` does, typed (the CLI parses its strings); every field has a command-line option of the same
    name."""

    model: str = "tiny-t2i"
    run_dir: str = "runs/tiny-t2i"
    prompts: str | None = None  # None: the built-in prompts
    calib: int = 8  # calibrate on the first N prompts ...
    test: int = 16  # ... and evaluate on the first M (the calibration prompts plus M - N more)
    component: str = "unet"
    sizes: tuple[float, ...] = tuple(round(0.50 + 0.01 * i, 2) for i in range(11))  # the 0.50:0.60:0.01 sweep
    steps: tuple[int, ...] = (1, 2)
    metrics: tuple[str, ...] = ("mse", "clip", "fid")
    cache_samples: int = 4
    validate: int = 30
    sketch_k: int | None = None
    max_mse: float | None = None  # no threshold given: the model's defaults (`default_thresholds`)
    max_fid_increase: float | None = None
    min_clip_delta: float | None = None
    max_accuracy_drop: float | None = None
    clip_model: str | None = None
    fid_weights: str | None = None


def _prompts(cfg: RunConfig) -> tuple[list[str], list[str]]:
    from anna.adapters import builtin_prompts
    from anna.prompts import load_prompts

    own = builtin_prompts(cfg.model) if cfg.prompts is None else None
    texts = own or (list(BUILTIN_PROMPTS) if cfg.prompts is None else load_prompts(cfg.prompts))
    if cfg.calib < 1 or cfg.test < 1:
        raise AnnaError("--calib and --test must be at least 1")
    if len(texts) < max(cfg.calib, cfg.test):
        raise AnnaError(f"{len(texts)} prompts given, but --calib {cfg.calib} / --test {cfg.test} need more")
    return texts[: cfg.calib], texts[: cfg.test]


def feasible_sizes(sizes: Sequence[float], smallest: float) -> list[float]:
    """The sweep, with budgets below the smallest feasible ratio replaced by that ratio (rounded up), once. When the
    whole sweep lies below it (a text encoder, whose embeddings are no unit), the same span is swept above it."""
    floor = float(f"{smallest + 0.0005:.3f}")
    asked = list(sizes)
    if max(asked) < floor:
        span = max(asked) - min(asked)
        asked = [round(floor + r - min(asked), 6) for r in asked if floor + r - min(asked) <= 1.0] or [floor]
        if span == 0:
            asked = [floor]
    return sorted({max(r, floor) for r in asked})


def export_plans(run_dir: str | Path, ratios: Sequence[float], model: Any, echo: Echo = print) -> list[Path]:
    """One checkpoint per budget's plan, on the given (loaded) model through a reversible handle; a checkpoint whose
    plan or calibration changed since it was exported is exported again, the others are reused."""
    from anna.export.checkpoint import export_checkpoint, is_stale

    folder = RunFolder(run_dir)
    checkpoints, redone = [], 0
    for r in ratios:
        out, plan = folder.checkpoint(r), folder.plan(r)
        if is_stale(out, run_dir, plan):
            export_checkpoint(run_dir, plan, out, echo=None, model=model)
            redone += 1
        checkpoints.append(out)
    echo(f"{len(checkpoints)} checkpoints in {folder.checkpoints} ({redone} exported, {len(checkpoints) - redone} "
         "up to date)")
    return checkpoints


def default_thresholds(cfg: RunConfig, model: Any) -> Any:
    """The thresholds given; when none is, the model's own (tiny-t2i: accuracy, CLIP and FID margins) or image
    MSE <= 30 on the 0-255 scale (PSNR >= 33 dB)."""
    from anna.evaluate.select import Thresholds

    given = Thresholds(cfg.max_fid_increase, cfg.min_clip_delta, cfg.max_mse, cfg.max_accuracy_drop)
    if given.given():
        return given
    if model.metrics.thresholds:
        return Thresholds(**dict(model.metrics.thresholds))
    return Thresholds(max_mse=30.0)


def run_all(cfg: RunConfig, echo: Echo = print, progress: bool = True) -> Path:
    """Run every stage; returns the path of report.html."""
    from anna.adapters import load_model
    from anna.analyze.stage import analyze, load_analysis
    from anna.budgets import plan_names
    from anna.calibrate import calibrate
    from anna.evaluate.evaluate import EvalConfig, evaluate, parse_metrics, parse_steps
    from anna.evaluate.select import select_to_file
    from anna.report import build_report
    from anna.search import search

    run_dir = Path(cfg.run_dir)
    folder = RunFolder(run_dir)
    calib_prompts, test_prompts = _prompts(cfg)
    steps, metrics = parse_steps(cfg.steps), parse_metrics(cfg.metrics)
    plan_names(sorted(cfg.sizes))  # a bad sweep is an error before any stage runs
    timings: dict[str, float] = {}

    def stage(name: str) -> None:
        timings[name] = time.time()
        echo(f"\n== {name} ==")

    stage("calibrate")
    model = load_model(cfg.model)
    model.require_weights("run")
    calibrate(model, run_dir, component=cfg.component, prompts=calib_prompts, cache_samples=cfg.cache_samples,
              progress=progress)
    stage("analyze")
    analyze(run_dir, model=model, sketch_k=cfg.sketch_k, validate=cfg.validate, progress=progress, echo=echo)
    stage("search")
    analysis = load_analysis(run_dir)
    smallest = analysis.size_ratio(analysis.sizes.argmin(1))
    ratios = feasible_sizes(cfg.sizes, smallest)
    if ratios[0] > min(cfg.sizes):
        echo(f"note: the smallest feasible size ratio is {smallest:.4f}; the sweep starts at {ratios[0]:.3f}")
    search(run_dir, ratios, model=model, echo=echo)
    stage("export")
    checkpoints = export_plans(run_dir, ratios, model, echo=echo)
    checkpoints.append(_all_fp8(run_dir, model))
    stage("evaluate")
    kit = model.metrics
    clip_model = cfg.clip_model or kit.clip_model
    config = EvalConfig(metrics=metrics, steps=steps, fid_weights=cfg.fid_weights or kit.fid_weights,
                        **({"clip_model": clip_model} if clip_model else {}))
    evaluate(model, checkpoints, test_prompts, folder.eval, config, echo=echo, progress=progress)
    if kit.judge:
        from anna.evaluate.accuracy import add_accuracy

        add_accuracy(folder.eval, kit.judge)
    stage("select")
    thresholds = default_thresholds(cfg, model)
    try:
        selection = select_to_file(folder.eval, thresholds, folder.selected_json)
        echo(f"selected {selection.chosen.name} (size ratio {selection.chosen.size_ratio:.4f}): {selection.reason}")
    except AnnaError as e:
        echo(f"no selection: {e}")
    stage("report")
    report = build_report(run_dir)
    timings["end"] = time.time()
    names = list(timings)
    echo("\n" + ", ".join(f"{n} {timings[b] - timings[n]:.1f}s" for n, b in zip(names, names[1:], strict=False)))
    echo(f"report: {report}")
    return report


ALL_FP8 = "all-fp8"


def _all_fp8(run_dir: Path, model: Any) -> Path:
    """The all-FP8 checkpoint (every unit `fp8-absmax`), the plain baseline the report shows beside the selection."""
    from anna.artifacts import write_json
    from anna.export.checkpoint import export_checkpoint, is_stale

    folder = RunFolder(run_dir)
    out, plan = folder.checkpoints / ALL_FP8, folder.plans / "baselines" / f"{ALL_FP8}.json"
    if not plan.is_file():
        write_json(plan, {"default": "fp8-absmax"})
    if is_stale(out, run_dir, plan):
        export_checkpoint(run_dir, plan, out, echo=None, model=model)
    return out
