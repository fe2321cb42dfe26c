"""Calibration: run the model on calibration data, stream per-unit activation statistics into bounded-memory
histograms and cache a few of the component's own inputs.

A run directory holds one model and one component:
- `run.json`: model, component, settings, seed, prompts, cache config, run hash and a summary;
- `calibration/stats.json`: per unit its kind and, per activation, min/max/absmax/percentiles/count/nonfinite;
- `calibration/stats.safetensors`: the histogram states stacked as `hist/FIELD` (rows named by `hist/keys`);
- `calibration/inputs.json` + `inputs.safetensors`: the cached component inputs (structure, origin; tensors);
- `calibration/progress.safetensors`: only while a run is unfinished (the resume checkpoint).
"""

from anna.calibrate.results import (
    load_cached_inputs,
    load_run,
    load_run_model,
    load_stats,
    run_component,
)
from anna.calibrate.runner import calibrate

__all__ = [
    "calibrate",
    "load_cached_inputs",
    "load_run",
    "load_run_model",
    "load_stats",
    "run_component",
]
