"""Where calibration writes in a run directory (one model, one component per run directory)."""

from __future__ import annotations

from pathlib import Path

RUN_JSON = "run.json"
CALIBRATION = "calibration"


def run_json(run_dir: str | Path) -> Path:
    """`run.json`: model, component, settings, seed, prompts, cache config, and the calibration summary."""
    return Path(run_dir) / RUN_JSON


def calibration_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CALIBRATION


def stats_json(run_dir: str | Path) -> Path:
    """Per-unit activation statistics for people and the later stages."""
    return calibration_dir(run_dir) / "stats.json"


def stats_tensors(run_dir: str | Path) -> Path:
    """Weight per-channel absmax (`weight/UNIT/WEIGHT`) and the stacked histogram states (`hist/FIELD`, `hist/keys`)."""
    return calibration_dir(run_dir) / "stats.safetensors"


def inputs_json(run_dir: str | Path) -> Path:
    """The structure of each cached component input and where it came from."""
    return calibration_dir(run_dir) / "inputs.json"


def inputs_tensors(run_dir: str | Path) -> Path:
    return calibration_dir(run_dir) / "inputs.safetensors"


def progress(run_dir: str | Path) -> Path:
    """Checkpoint of an unfinished run (histogram states, cache, finished items); removed when the run completes."""
    return calibration_dir(run_dir) / "progress.safetensors"
