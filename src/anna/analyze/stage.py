"""`anna analyze`: build the error model of a calibrated run, validate it on random plans, write `RUN/analysis/`.

Artifacts: `analysis/error_model.json` (units, options, sizes, settings), `analysis/error_model.safetensors` (exact
per-unit MSEs, delta sketches, Fisher scores) and `analysis/validation.json` (predicted against measured MSE).
A partial model is checkpointed after every unit, so an interrupted analysis resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anna.adapters.base import Model
from anna.analyze.batching import batch_size, merge_samples
from anna.analyze.error_model import ErrorModel, build_error_model, measured_mse, reference_outputs
from anna.analyze.fidelity import near_front_plans
from anna.analyze.linearized import DEFAULT_PROBES, build_linear_model
from anna.analyze.quantizer import UnitQuantizer
from anna.analyze.validate import corrected_report, measure_plans, validation_report
from anna.artifacts import read_json, read_tensors, write_json, write_tensors
from anna.errors import AnnaError
from anna.inventory import Inventory, build_inventory
from anna.options.registry import default_bag, parse_bag, same_trials
from anna.runfolder import RunFolder

ERROR_MODELS = ("exact", "linear")


def _linear_builder(probes: int, sizes: np.ndarray) -> Callable[..., ErrorModel]:
    """build_error_model's signature over the linearised model (it has no per-unit checkpoints: it is fast). Options
    dominated on a unit early on are pruned there (search would never choose them): on tiny-sdxl's UNet that leaves
    the clippings on few units and halves the analysis, with the same plans (bench/peers.py)."""

    def build(run, samples, units, options, quantize, *, seed, progress, component, grad_run, same_as, **_ignored):
        return build_linear_model(
            grad_run, samples, units, options, quantize, component, probes=probes, seed=seed, progress=progress,
            sizes=sizes, same_as=same_as,
        )

    return build


# The linear model's probes on a component with attention and convolution units (a UNet, a VAE decoder), unless
# given: enough for UNET_PROJECTIONS_PER_UNIT probes x calibration rows per unit, from DEFAULT_PROBES to
# UNET_MAX_PROBES. Measured with bench/peers.py (per-projection bags; held-out MSE over auto_quantize's, worst over
# S..S+0.10): on tiny-t2i's UNet (161 units, 200 rows) 4 probes gave 1.107 (its top-budget plan predicted 18% under
# its measured MSE: the search chose on sketch noise), 16 probes 1.010 (analysis 8 -> 15 s); on tiny-t2i's VAE
# decoder (28 units, 100 rows) 6 (linearized's floor) and 16 probes gave the same plans (0.990), 16 at 4x the
# analysis time; tiny-sdxl's UNet (161 units, 1600 rows) keeps 4 (1.018). SDXL (374 units, 16 rows) gets 16, under
# linearized's own floor there (32).
UNET_PROJECTIONS_PER_UNIT = 20
UNET_MAX_PROBES = 16


def default_probes(kinds: Sequence[str], rows: int) -> int:
    """The linear model's probes for a component whose units have these kinds, on `rows` calibration batch rows."""
    if not {"attention", "conv"} <= set(kinds):
        return DEFAULT_PROBES
    need = -(-UNET_PROJECTIONS_PER_UNIT * len(kinds) // max(rows, 1))
    return min(UNET_MAX_PROBES, max(DEFAULT_PROBES, need))


@dataclass
class Analysis:
    """What search needs: the error model, the units' sizes per option, and the component's byte totals."""

    model: str
    component: str
    error_model: ErrorModel
    sizes: np.ndarray  # (n, m) int64 bytes, options in error_model.options order
    base_bytes: int
    total_bytes_fp16: int

    def size_ratio(self, choice: np.ndarray) -> float:
        rows = np.arange(len(choice))
        return float((self.base_bytes + self.sizes[rows, choice].sum()) / self.total_bytes_fp16)


@dataclass
class Trial:
    """A loaded run ready for trials: runs the component on the cached inputs, quantized as asked."""

    model: Model
    component: str
    inventory: Inventory
    units: list[str]
    samples: list[Any]
    quantizer: UnitQuantizer

    def run(self, sample: Any) -> torch.Tensor:
        from anna.calibrate import run_component

        return run_component(self.model, self.component, sample)

    def run_with_grad(self, sample: Any) -> torch.Tensor:
        from anna.calibrate import run_component

        return run_component(self.model, self.component, sample, grad=True)

    def assignment(self, options: Sequence[str], choice: np.ndarray) -> dict[str, str]:
        return {u: options[c] for u, c in zip(self.units, choice, strict=True)}


def open_trial(run_dir: str | Path, model: Model | None = None, max_batch: int = 16) -> Trial:
    """Load the run's model (from run.json unless given), statistics and cached inputs."""
    from anna.calibrate import load_cached_inputs, load_run_model, load_stats

    _, model, component = load_run_model(run_dir, "analyze", model)
    stats = load_stats(run_dir)
    inventory = build_inventory(model, component)
    units = [u.name for u in inventory.units if u.name in stats]
    if not units:
        raise AnnaError(f"run {run_dir} has no calibrated units")
    samples = merge_samples(load_cached_inputs(run_dir), max_batch)
    if not samples:
        raise AnnaError(f"run {run_dir} has no cached component inputs: recalibrate with --cache-samples >= 1")
    module = model.component(component)
    return Trial(model, component, inventory, units, samples, UnitQuantizer(module, stats))


def _sizes(inventory: Inventory, units: Sequence[str], options: Sequence[str]) -> tuple[np.ndarray, int]:
    rows = [inventory.unit(u).bytes for u in units]
    sizes = np.array([[b[o] for o in options] for b in rows], dtype=np.int64)
    return sizes, inventory.total_bytes_fp16 - int(sizes[:, 0].sum())


def _config_id(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def analyze(
    run_dir: str | Path,
    *,
    model: Model | None = None,
    bag: Sequence[str] | None = None,
    sketch_k: int | None = None,
    fisher_samples: int = 1,
    validate: int = 30,
    size_range: tuple[float, float] = (0.0, 0.10),
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], Any] | None = print,
    error_model: str = "linear",
    probes: int | None = None,
) -> Path:
    """Build, validate and save the error model of `run_dir`; returns the analysis folder. `error_model` is
    "linear" (`probes` backward passes per sample and one local run per unit-option: see anna.analyze.linearized;
    None: `default_probes`) or "exact" (one component run per unit, option and sample; resumable unit by unit).
    Validation measures `validate` plans near the front whose sizes span `size_range` above the smallest feasible
    ratio; with two or more cached samples, the last one is held out of the model and the fidelity on it is
    reported too."""
    if error_model not in ERROR_MODELS:
        raise AnnaError(f"unknown error model '{error_model}': choose one of {', '.join(ERROR_MODELS)}")
    start = time.time()
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    out = folder.analysis
    trial = open_trial(run_dir, model)
    kinds = [trial.inventory.unit(u).kind for u in trial.units]
    options = parse_bag(",".join(bag) if bag else None, default_bag(kinds))
    fit_samples = trial.samples[: len(trial.samples) - _holdout(trial, validate)]
    if probes is None:
        probes = default_probes(kinds, sum(batch_size(s) or 1 for s in fit_samples))
    config = {
        "calibration": folder.calibration_digest(),  # a recalibration makes the analysis stale
        "model": trial.model.name,
        "component": trial.component,
        "units": trial.units,
        "options": options,
        "sketch_k": sketch_k,
        "fisher_samples": fisher_samples,
        "samples": len(trial.samples) - _holdout(trial, validate),
        **({"holdout": 1} if _holdout(trial, validate) else {}),
        "seed": seed,
        **({"error_model": error_model, "probes": probes, "pruning": "dominated"} if error_model != "exact" else {}),
    }
    config_id = _config_id(config)
    if _finished(out, config_id, validate):
        if echo:
            echo(f"analysis in {out} is up to date")
        return out
    if _model_matches(out, config_id):  # the error model is done; only its validation is missing
        analysis = load_analysis(run_dir, corrected=False)
        return _validate_and_report(trial, analysis, out, validate, size_range, seed, echo)
    folder.validation_json.unlink(missing_ok=True)  # it belongs to another configuration
    state, done = _load_partial(out, config, config_id)
    if done and echo:
        echo(f"resuming analysis after {done} of {len(trial.units)} units")

    def checkpoint(em: ErrorModel, units_done: int) -> None:
        write_tensors(folder.partial_tensors, em.to_tensors())
        write_json(folder.partial_json, {"config_id": config_id, "done": units_done, "n_elements": em.n_elements})

    sizes, base = _sizes(trial.inventory, trial.units, options)
    build = build_error_model if error_model == "exact" else _linear_builder(probes, sizes)
    em = build(
        trial.run,
        trial.samples[: len(trial.samples) - _holdout(trial, validate)],
        trial.units,
        options,
        trial.quantizer,
        sketch_k=sketch_k,
        seed=seed,
        progress=progress,
        state=state,
        done=done,
        on_unit=checkpoint,
        component=trial.model.component(trial.component),
        fisher_samples=min(fisher_samples, len(trial.samples) - _holdout(trial, validate)),
        grad_run=trial.run_with_grad,
        same_as=same_trials(kinds, options),
    )
    analysis = Analysis(trial.model.name, trial.component, em, sizes, base, trial.inventory.total_bytes_fp16)
    write_tensors(folder.error_model_tensors, em.to_tensors())
    write_json(
        folder.error_model_json,
        {
            **config,
            "config_id": config_id,
            "n_elements": em.n_elements,
            "sizes": sizes.tolist(),
            "base_bytes": base,
            "total_bytes_fp16": trial.inventory.total_bytes_fp16,
            "nonfinite": [
                f"{u}:{o}"
                for i, u in enumerate(trial.units)
                for j, o in enumerate(options)
                if not np.isfinite(em.diag[i, j])
            ],
            "seconds": round(time.time() - start, 2),
        },
    )
    for path in (folder.partial_tensors, folder.partial_json):
        path.unlink(missing_ok=True)
    return _validate_and_report(trial, analysis, out, validate, size_range, seed, echo)


def _validate_and_report(
    trial: Trial,
    analysis: Analysis,
    out: Path,
    validate: int,
    size_range: tuple[float, float],
    seed: int,
    echo: Callable[[str], Any] | None,
) -> Path:
    if validate > 0:
        report = validate_model(trial, analysis, validate, size_range, seed)
        write_json(RunFolder(out.parent).validation_json, report)
        c = report["correction"]
        if echo:
            echo(
                f"validation on {report['n_plans']} plans near the front: Spearman {report['spearman']:.3f}, "
                f"R^2 {report['r2']:.3f}; measured/predicted {report['median_ratio_measured_over_predicted']:.2f}"
            )
            if "heldout" in report:
                h = report["heldout"]
                echo(f"on the held-out sample: Spearman {h['spearman']:.3f}, R^2 {h['r2']:.3f}")
            echo(
                f"correction: MSE ~ {c['diag_scale']:.3f} x own + {c['cross_scale']:.2f} x cross terms: "
                f"R^2 {c['r2']:.3f} (out of sample {c['r2_out_of_sample']:.3f}), Spearman {c['spearman']:.3f}"
            )
    if echo:
        n, m = analysis.error_model.shape
        echo(f"analysis of {n} units x {m - 1} options written to {out}")
    return out


def _holdout(trial: Trial, validate: int) -> int:
    """How many cached samples validation keeps out of the model: the last one, when there are two or more."""
    return 1 if validate > 0 and len(trial.samples) >= 2 else 0


def validate_model(trial: Trial, analysis: Analysis, n: int, size_range: tuple[float, float], seed: int) -> dict:
    """Measure `n` plans near the model's front (see anna.analyze.fidelity) at sizes from S + size_range[0] to
    S + size_range[1] (S: the smallest feasible ratio), on the samples the model was built on and on the held-out
    sample (if any)."""
    em = analysis.error_model
    ok = np.isfinite(em.diag)
    plans = near_front_plans(
        em.gram(), analysis.sizes, analysis.base_bytes, analysis.total_bytes_fp16, ok, n, size_range, seed
    )
    held = _holdout(trial, n)
    fit = trial.samples[: len(trial.samples) - held]
    rest = trial.samples[len(fit) :]
    refs, held_refs = reference_outputs(trial.run, fit), reference_outputs(trial.run, rest)
    held_mse: list[float] = []

    def measure(choice: np.ndarray) -> float:
        with trial.quantizer(trial.assignment(em.options, choice)):
            if rest:
                held_mse.append(measured_mse(trial.run, rest, held_refs))
            return measured_mse(trial.run, fit, refs)

    points = measure_plans(plans, measure, em.parts, analysis.size_ratio)
    lo = min((p["size_ratio"] for p in points), default=float("nan"))
    hi = max((p["size_ratio"] for p in points), default=float("nan"))
    report = {"size_range": [lo, hi], "correction": corrected_report(points), **validation_report(points)}
    if held_mse:
        held_points = [{**p, "measured": h} for p, h in zip(points, held_mse, strict=True)]
        report["heldout"] = {k: v for k, v in validation_report(held_points).items() if k != "points"}
    return report


def _model_matches(out: Path, config_id: str) -> bool:
    meta = RunFolder(out.parent).error_model_json
    return meta.is_file() and read_json(meta, "analysis").get("config_id") == config_id


def _finished(out: Path, config_id: str, validate: int) -> bool:
    """An analysis with the same configuration is complete (with its validation when one is asked for)."""
    if not _model_matches(out, config_id):
        return False
    if validate <= 0:
        return True
    path = RunFolder(out.parent).validation_json
    return path.is_file() and read_json(path, "validation").get("n_plans", 0) > 0


def _load_partial(out: Path, config: dict[str, Any], config_id: str) -> tuple[ErrorModel | None, int]:
    """The checkpointed partial model when it was made with the same configuration, else nothing."""
    meta_path = RunFolder(out.parent).partial_json
    if not meta_path.is_file():
        return None, 0
    meta = read_json(meta_path, "partial analysis")
    if meta.get("config_id") != config_id:
        return None, 0
    tensors = read_tensors(RunFolder(out.parent).partial_tensors, "partial analysis")
    em = ErrorModel.from_tensors(tensors, config["units"], config["options"], int(meta["n_elements"]))
    return em, int(meta["done"])


def load_analysis(run_dir: str | Path, corrected: bool = True) -> Analysis:
    """Read the saved error model and sizes; with `corrected`, apply the correction that validation fitted."""
    folder = RunFolder(run_dir)
    meta = read_json(folder.error_model_json, "analysis (run `anna analyze` first)")
    em = ErrorModel.from_tensors(
        read_tensors(folder.error_model_tensors, "error model"), meta["units"], meta["options"], meta["n_elements"]
    )
    if corrected and folder.validation_json.is_file():
        correction = read_json(folder.validation_json, "validation")["correction"]
        em.diag_scale, em.cross_scale = correction["diag_scale"], correction["cross_scale"]
    return Analysis(
        meta["model"],
        meta["component"],
        em,
        np.array(meta["sizes"], dtype=np.int64),
        int(meta["base_bytes"]),
        int(meta["total_bytes_fp16"]),
    )
