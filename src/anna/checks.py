"""Checks made before any expensive stage starts: output folders that can be written, bounded numbers, a model spec
that is not a plain file, and the click parameter types that bound the CLI's numbers.

Each check raises a one-line :class:`~anna.errors.AnnaError`; the CLI calls them before loading a model.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import click

from anna.errors import AnnaError, describe_os_error

MAX_STEPS = 1000  # sampling steps: the SDXL schedulers train on 1000 timesteps
MAX_SIDE = 8192  # image height and width in pixels
MAX_SEED = 2**63 - 2**32  # torch generators take 64-bit seeds; prompt i uses seed + i
MIN_FREE_BYTES = 16 * 2**20  # a run folder on a disk with less free space is reported before any work


class ImageSide(click.IntRange):
    """An image height or width in pixels: 8 to MAX_SIDE, a multiple of 8 (the VAE's downsampling)."""

    def __init__(self) -> None:
        super().__init__(8, MAX_SIDE)

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        rv = super().convert(value, param, ctx)
        if rv % 8:
            self.fail(f"{rv} is not a multiple of 8.", param, ctx)
        return rv


class BoundedFloat(click.FloatRange):
    """A finite float option within [lo, hi]: NaN and infinities are refused (click's FloatRange lets NaN through)."""

    def __init__(self, lo: float | None = None, hi: float | None = None) -> None:
        super().__init__(lo, hi)

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        rv = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(rv, param, ctx)


def writable_folder(path: str | Path, option: str = "--run", *, create: bool = True) -> Path:
    """Make sure ``path`` is (or can become) a folder that can be written and has some free space; returns it.

    A file in its place, a symbolic link loop, a read-only or full disk and missing permissions are all reported
    now, in one line, rather than when the first result is written. With ``create=False`` (a stage that reads an
    existing run) a missing folder is left for the stage to report.
    """
    p = Path(path).expanduser()
    try:
        if not create and not p.is_symlink() and not p.exists():
            return p
        if p.exists() and not p.is_dir():
            raise AnnaError(f"{option} {path} is a file, not a folder: give a folder path")
        if p.is_symlink() and not p.exists():
            os.stat(p)  # a loop or a dangling link raises here
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".anna-write-check-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            os.write(fd, b"anna")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
        free = shutil.disk_usage(p).free
    except FileExistsError:
        raise AnnaError(f"{option} {path}: a part of the path is a file, not a folder: give another path") from None
    except OSError as e:
        raise AnnaError(f"{option} {path} cannot be written: {describe_os_error(e)}") from None
    if free < MIN_FREE_BYTES:
        raise AnnaError(f"{option} {path}: its disk has only {free:,} bytes free: free some space first")
    return p


def model_not_a_file(spec: str) -> None:
    """A ``--model`` that names an existing file is refused: models are names, hub ids or diffusers folders."""
    p = Path(spec).expanduser()
    if p.exists() and not p.is_dir():
        raise AnnaError(f"--model {spec} is a file, not a folder: give tiny-sdxl, sdxl, a hub id or a local "
                        "diffusers folder (with model_index.json)")


def existing_file(path: str | Path | None, option: str) -> None:
    """An optional input file that must exist and be a file (not a folder)."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise AnnaError(f"{option} {path} is a folder, not a file")
    if not p.is_file():
        raise AnnaError(f"{option} {path} not found")


def bounded_steps(steps: Sequence[int], option: str = "--steps", first: int = 1) -> tuple[int, ...]:
    """Sampling steps values (or step indices, ``first=0``) within range: a huge value would exhaust memory in the
    scheduler."""
    last = MAX_STEPS - 1 + first
    for s in steps:
        if not first <= s <= last:
            raise AnnaError(f"{option} value {s} is out of range: use {first} to {last}")
    return tuple(steps)


def checkpoint_folders(paths: Sequence[str | Path]) -> None:
    """Every ``--checkpoint`` is read (plan, header, sizes; no tensor data) before any image is generated."""
    from anna.evaluate.evaluate import describe_checkpoints

    describe_checkpoints(paths)
