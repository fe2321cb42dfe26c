"""`anna evaluate`: image and component quality of checkpoints against the original pipeline.

For every steps value the original pipeline generates one image per prompt (prompt i with seed `seed + i`), once;
the images and a bounded sample of the quantized component's inputs and outputs are cached in `OUT/original/steps-N`.
Then, for every (checkpoint, steps):

- `mse`: image MSE against the original's image of the same prompt and seed, on the 0-255 pixel scale, averaged over
  the prompts (`mse_per_image` keeps each one);
- `component_mse`: the quantized component run on exactly the captured inputs, against the captured outputs;
- `clip`: CLIP score (torchmetrics `CLIPScore`, mean over images of `100 * max(cos, 0)`);
- `fid`: FID against the original's images at the same steps, or against `fid_reference` (a folder of images).

A metric that cannot run is null, with one line beside it (`clip_reason`, ...). `OUT/metrics.json` is rewritten after
every entry; images go to `OUT/original/steps-N/` and `OUT/<checkpoint-name>/steps-N/`.

The published SDXL-Turbo split: calibrate on COCO caption rows 1-50, test on rows 1-100 (those 50 plus 50 more),
at 1 and 2 steps: `anna evaluate --model stabilityai/sdxl-turbo --prompts coco2014_val_captions.tsv:1-100
--steps 1,2 ...` (see `published_split`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from anna.adapters.base import Model
from anna.artifacts import FORMAT_VERSION, read_json, write_json
from anna.errors import AnnaError
from anna.evaluate.capture import replay_mse, save_capture
from anna.evaluate.checkpoints import ORIGINAL, CheckpointRef, apply_checkpoint, describe_checkpoints, load_reversibly
from anna.evaluate.metrics import (
    DEFAULT_CLIP_MODEL,
    ClipScorer,
    FidScorer,
    MetricUnavailable,
    fid_feature_extractor,
    images_mse,
    load_reference_folder,
)
from anna.evaluate.originals import (
    CACHE_FILE,
    _generate_originals,
    _load_cached,
    _Originals,
    _save_images,
    _settings_json,
)
from anna.generate import generate_images

METRICS = ("mse", "clip", "fid")
METRICS_FILE = "metrics.json"

# The published SDXL-Turbo study: calibration prompts are COCO caption rows 1-50, test prompts rows 1-100.
PUBLISHED_CALIBRATION_ROWS = (1, 50)
PUBLISHED_TEST_ROWS = (1, 100)
PUBLISHED_STEPS = (1, 2)

Echo = Callable[[str], Any] | None


def published_split(tsv: str | Path) -> tuple[str, str]:
    """Prompt specs (calibration, test) of the published SDXL-Turbo split on a COCO captions TSV."""
    (a, b), (c, d) = PUBLISHED_CALIBRATION_ROWS, PUBLISHED_TEST_ROWS
    return f"{tsv}:{a}-{b}", f"{tsv}:{c}-{d}"


@dataclass(frozen=True)
class EvalConfig:
    """What to measure and how to sample. `steps` None: the model's default; other None fields likewise."""

    metrics: tuple[str, ...] = METRICS
    steps: tuple[int, ...] | None = None
    seed: int = 0
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    clip_model: str | None = None  # None: the model's own (tiny-t2i: its domain CLIP), else DEFAULT_CLIP_MODEL
    fid_weights: str | None = None  # None: the model's own FID features, else Inception
    fid_reference: str | None = None
    component_calls: int = 16


def parse_metrics(spec: str | Sequence[str]) -> tuple[str, ...]:
    """`mse,clip,fid` (any subset, any order) to a validated tuple in canonical order."""
    names = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise AnnaError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)


def parse_steps(spec: str | Sequence[int]) -> tuple[int, ...]:
    """`1,2` to (1, 2): positive, distinct, in the order given."""
    try:
        values = [int(s) for s in spec.split(",") if s.strip()] if isinstance(spec, str) else [int(s) for s in spec]
    except ValueError:
        raise AnnaError(f"bad --steps '{spec}': use a comma-separated list of positive integers, e.g. 1,2") from None
    if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise AnnaError(f"bad --steps '{spec}': use distinct positive integers, e.g. 1,2")
    return tuple(values)


# Metrics of one image set


class _Scorers:
    """CLIP and FID scorers, created at first use; a scorer that cannot be had leaves its reason instead."""

    def __init__(self, config: EvalConfig) -> None:
        self.config = config
        self._clip: ClipScorer | None = None
        self.clip_reason: str | None = None if "clip" in config.metrics else _not_requested(config)
        self._feature: torch.nn.Module | None = None
        self.fid_feature: str | None = None
        self.fid_reason: str | None = None if "fid" in config.metrics else _not_requested(config)
        self._fid: dict[str, FidScorer] = {}

    def clip(self) -> ClipScorer | None:
        if self._clip is None and self.clip_reason is None:
            try:
                self._clip = ClipScorer(self.config.clip_model)
            except MetricUnavailable as e:
                self.clip_reason = str(e)
        return self._clip

    def fid(self, key: str, reference: Callable[[], Sequence[Image.Image]]) -> FidScorer | None:
        if self._feature is None and self.fid_reason is None:
            try:
                self._feature, self.fid_feature = fid_feature_extractor(self.config.fid_weights)
            except MetricUnavailable as e:
                self.fid_reason = str(e)
        if self._feature is None:
            return None
        if key not in self._fid:
            scorer = FidScorer(self._feature)
            scorer.set_reference(reference())
            self._fid[key] = scorer
        return self._fid[key]


def _not_requested(config: EvalConfig) -> str:
    return f"not requested (--metrics {','.join(config.metrics)})"


def _clip_of(scorers: _Scorers, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, Any]:
    scorer = scorers.clip()
    if scorer is None:
        return {"clip": None, "clip_reason": scorers.clip_reason, "clip_per_image": None}
    per = scorer.scores(images, prompts)
    return {"clip": float(np.mean(per)), "clip_reason": None, "clip_per_image": per}


def _fid_of(
    scorers: _Scorers, key: str, reference: Callable[[], Sequence[Image.Image]], images: Sequence[Image.Image]
) -> dict[str, Any]:
    try:
        scorer = scorers.fid(key, reference)
        if scorer is None:
            return {"fid": None, "fid_reason": scorers.fid_reason}
        return {"fid": scorer.score(images), "fid_reason": None}
    except MetricUnavailable as e:
        return {"fid": None, "fid_reason": str(e)}


# The evaluation


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate(
    model: str | Model | Callable[[], Model],
    checkpoints: Sequence[str | Path],
    prompts: Sequence[str],
    out_dir: str | Path,
    config: EvalConfig = EvalConfig(),
    *,
    prompts_spec: str | None = None,
    echo: Echo = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every checkpoint at every steps value against the original pipeline; write and return metrics.json.

    `model` is a model spec for `load_model` or a loaded base `Model`: the one pipeline serves every checkpoint, each
    applied through a reversible handle and undone after it. A factory that returns a fresh base model instead
    rebuilds each checkpoint on a fresh one.
    """
    if not prompts:
        raise AnnaError("no prompts to evaluate with")
    metrics = parse_metrics(config.metrics)
    config = replace(config, metrics=metrics)
    if config.component_calls < 1:
        raise AnnaError(f"component_calls must be at least 1, got {config.component_calls}")
    refs = describe_checkpoints(checkpoints)
    factory: Callable[[], Model] | None = None
    if isinstance(model, str):
        from anna.adapters import load_model

        shared = load_model(model)
    elif isinstance(model, Model):
        shared = model
    else:
        factory = model
        shared = factory()
    say: Callable[[str], Any] = (lambda s: tqdm.write(s)) if echo is print else (echo or (lambda s: None))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    base: Model | None = shared
    base.require_weights("evaluate")
    if base.defaults is None:
        raise AnnaError(f"model '{base.name}' is not a pipeline: evaluate needs a text-to-image pipeline")
    for ref in refs:
        if ref.component is not None and ref.component not in base.components:
            raise AnnaError(f"checkpoint {ref.path} is for component '{ref.component}', which {base.name} lacks")
    config = replace(config, clip_model=config.clip_model or base.metrics.clip_model or DEFAULT_CLIP_MODEL,
                     fid_weights=config.fid_weights or base.metrics.fid_weights)
    overrides = {k: v for k, v in (("guidance", config.guidance), ("height", config.height),
                                   ("width", config.width)) if v is not None}
    defaults = replace(base.defaults, **overrides)
    reference_images = (
        load_reference_folder(config.fid_reference, (defaults.width, defaults.height))
        if config.fid_reference is not None and "fid" in metrics
        else None
    )
    steps = config.steps or (defaults.steps,)
    components = {r.component for r in refs if r.component is not None} if "mse" in metrics else set()
    prompts = list(prompts)
    scorers = _Scorers(config)

    result: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": base.name,
        "prompts": prompts_spec or f"{len(prompts)} prompts",
        "num_prompts": len(prompts),
        "prompt_texts": prompts,
        "seed": config.seed,
        "settings": {"guidance": defaults.guidance, "height": defaults.height, "width": defaults.width},
        "steps": list(steps),
        "metrics": list(metrics),
        "clip_model": config.clip_model if "clip" in metrics else None,
        "fid_reference": str(Path(config.fid_reference).resolve()) if config.fid_reference else ORIGINAL,
        "fid_feature": None,
        "component_calls": config.component_calls,
        "original": [],
        "entries": [],
    }

    # The originals, once per steps value (cached in OUT/original/steps-N).
    originals: dict[int, _Originals] = {}
    for s in steps:
        settings = replace(defaults, steps=s)
        folder = out / ORIGINAL / f"steps-{s}"
        key = {"model": base.name, "prompts": prompts, "seed": config.seed, "settings": _settings_json(settings),
               "component_calls": config.component_calls}
        cached = _load_cached(folder, key, components, len(prompts))
        if cached is not None:
            say(f"original, {s} step(s): {len(prompts)} cached images in {folder}")
            originals[s] = cached
            continue
        say(f"original, {s} step(s): generating {len(prompts)} images")
        orig = _generate_originals(base, prompts, settings, config.seed, components, config.component_calls, progress)
        _save_images(orig.images, folder, prompts)
        saved = [c for c, cap in orig.captures.items() if save_capture(cap, folder)]
        write_json(folder / CACHE_FILE, {**key, "captures": saved})
        originals[s] = orig

    def fid_reference(s: int) -> tuple[str, Callable[[], Sequence[Image.Image]]]:
        if reference_images is None:
            return f"steps-{s}", lambda: originals[s].images
        return "reference", lambda: reference_images

    for s in steps:
        row: dict[str, Any] = {"steps": s, "images": f"{ORIGINAL}/steps-{s}", "mse": 0.0, "mse_reason": None}
        row |= _clip_of(scorers, originals[s].images, prompts)
        if config.fid_reference is None and "fid" in metrics:
            # FID of a set against itself is 0 by definition; computing it only shows round-off.
            scorers.fid(*fid_reference(s))
            reason = scorers.fid_reason
            if reason is None and len(prompts) < 2:
                reason = f"FID needs at least 2 images in each set (evaluated {len(prompts)})"
            row |= {"fid": None if reason else 0.0, "fid_reason": reason,
                    "fid_note": None if reason else "FID reference is the original's own images"}
        else:
            row |= _fid_of(scorers, *fid_reference(s), originals[s].images)
        result["original"].append(row)
    result["fid_feature"] = scorers.fid_feature
    write_json(out / METRICS_FILE, result)

    jobs = tqdm(total=len(refs) * len(steps), desc="evaluate", unit="entry", disable=not progress)
    for ref in refs:
        if factory is None:  # one pipeline for every checkpoint: undone after each
            model_q = shared
            undo = load_reversibly(model_q, ref, echo=say)
        else:
            model_q = base if base is not None else factory()
            base = None
            apply_checkpoint(model_q, ref.path, echo=say)
            undo = None
        plan = ref.plan
        for s in steps:
            jobs.set_postfix_str(f"{ref.name}, {s} step(s)")
            settings = replace(defaults, steps=s)
            t0 = time.perf_counter()
            images = generate_images(model_q, prompts, settings, config.seed, progress=progress)
            seconds = time.perf_counter() - t0
            _save_images(images, out / ref.name / f"steps-{s}", prompts)
            entry: dict[str, Any] = {
                "checkpoint": str(ref.path),
                "name": ref.name,
                "kind": ref.kind,
                "component": ref.component,
                "steps": s,
                "size_ratio": None if plan is None else plan.size_ratio,
                "budget": None if plan is None else plan.budget,
                "predicted_mse": None if plan is None else plan.predicted_mse,
                "fp16_units": plan.fp16_units if plan is not None and plan.units else None,
                "images": f"{ref.name}/steps-{s}",
                "generate_seconds": seconds,
            }
            entry |= _mse_of(metrics, config, originals[s], images, model_q, ref)
            entry |= _clip_of(scorers, images, prompts)
            entry |= _fid_of(scorers, *fid_reference(s), images)
            result["entries"].append(entry)
            result["fid_feature"] = scorers.fid_feature
            write_json(out / METRICS_FILE, result)
            say(_summary_line(entry))
            jobs.update(1)
        if undo is not None:
            undo()
        model_q = None
        _free()
    jobs.close()
    for what in ("clip", "fid"):
        reason = getattr(scorers, f"{what}_reason")
        if reason and not reason.startswith("not requested"):
            say(f"{what}: null ({reason})")
    return result


def _mse_of(
    metrics: Sequence[str],
    config: EvalConfig,
    orig: _Originals,
    images: Sequence[Image.Image],
    model: Model,
    ref: CheckpointRef,
) -> dict[str, Any]:
    if "mse" not in metrics:
        reason = _not_requested(config)
        return {"mse": None, "mse_reason": reason, "mse_per_image": None, "component_mse": None,
                "component_mse_reason": reason}
    per = images_mse(orig.images, images)
    row: dict[str, Any] = {"mse": float(np.mean(per)), "mse_reason": None, "mse_per_image": per}
    if ref.kind == "onnx":
        reason = "not measured for ONNX checkpoints (the component runs in ONNX Runtime, not as a torch module)"
        return row | {"component_mse": None, "component_mse_reason": reason}
    if ref.component is None:
        reason = f"{ref.path} has no plan.json naming its component"
        return row | {"component_mse": None, "component_mse_reason": reason}
    try:
        value = replay_mse(model.component(ref.component), orig.captures[ref.component])
        return row | {"component_mse": value, "component_mse_reason": None}
    except (AnnaError, RuntimeError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0]
        return row | {"component_mse": None, "component_mse_reason": f"cannot run the {ref.kind} component on the "
                      f"captured inputs: {type(e).__name__}: {first}"}


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "null" if value is None else format(value, spec)


def _summary_line(e: dict[str, Any]) -> str:
    return (f"{e['name']}, {e['steps']} step(s): size {_fmt(e['size_ratio'], '.4f')}  mse {_fmt(e['mse'])}  "
            f"component_mse {_fmt(e['component_mse'])}  clip {_fmt(e['clip'])}  fid {_fmt(e['fid'])}")


def load_metrics(path: str | Path) -> dict[str, Any]:
    """metrics.json from a file or an evaluation folder, checked for its entries."""
    p = Path(path)
    if p.is_dir():
        p = p / METRICS_FILE
    obj = read_json(p, "evaluation metrics")
    if not isinstance(obj.get("entries"), list) or not isinstance(obj.get("original", []), list):
        raise AnnaError(f"{p} is not an anna metrics.json (no 'entries' list)")
    return obj
