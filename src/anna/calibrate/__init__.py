"""Calibration: run the model on calibration data, stream per-unit activation statistics into bounded-memory
histograms, record weight per-channel absmax and cache a few of the component's own inputs, into `RUN/calibration/`.
"""

from anna.calibrate.results import load_cached_inputs, load_run, load_stats, load_weight_absmax, run_component
from anna.calibrate.runner import calibrate

__all__ = ["calibrate", "load_cached_inputs", "load_run", "load_stats", "load_weight_absmax", "run_component"]
