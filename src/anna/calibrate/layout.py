"""Where calibration writes in a run directory (one model, one component per run directory): see `anna.runfolder`."""

from __future__ import annotations

from pathlib import Path

from anna.runfolder import RunFolder


def run_json(run_dir: str | Path) -> Path:
    """`run.json`: model, component, settings, seed, prompts, cache config, and the calibration summary."""
    return RunFolder(run_dir).run_json


def stats_json(run_dir: str | Path) -> Path:
    """Per-unit activation statistics for people and the later stages."""
    return RunFolder(run_dir).stats_json


def stats_tensors(run_dir: str | Path) -> Path:
    """The stacked histogram states (`hist/FIELD`, `hist/keys`)."""
    return RunFolder(run_dir).stats_tensors


def inputs_json(run_dir: str | Path) -> Path:
    """The structure of each cached component input and where it came from."""
    return RunFolder(run_dir).inputs_json


def inputs_tensors(run_dir: str | Path) -> Path:
    return RunFolder(run_dir).inputs_tensors


def progress(run_dir: str | Path) -> Path:
    """Checkpoint of an unfinished run (histogram states, cache, finished items); removed when the run completes."""
    return RunFolder(run_dir).progress
