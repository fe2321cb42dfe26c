"""The original pipeline's images and component captures, generated once per steps value and cached in
`OUT/original/steps-N` (moved from `anna.evaluate.evaluate`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from anna.adapters.base import GenerationSettings, Model
from anna.artifacts import read_json, write_text
from anna.errors import AnnaError
from anna.evaluate.capture import Capture, capture_calls, load_capture
from anna.generate import generate_images, save_png

CACHE_FILE = "cache.json"


@dataclass
class _Originals:
    images: list[Image.Image]
    captures: dict[str, Capture]


def _settings_json(settings: GenerationSettings) -> dict[str, Any]:
    return asdict(settings)


def _save_images(images: Sequence[Image.Image], folder: Path, prompts: Sequence[str]) -> None:
    for stale in folder.glob("[0-9][0-9][0-9][0-9].png"):  # from an earlier run with more prompts
        if int(stale.stem) >= len(images):
            stale.unlink()
    for i, img in enumerate(images):
        save_png(img, folder / f"{i:04d}.png")
    write_text(folder / "prompts.txt", "\n".join(prompts) + "\n")


def _load_cached(folder: Path, key: dict[str, Any], components: set[str], n: int) -> _Originals | None:
    """The cached originals when they were made with the same model, prompts, seed and settings."""
    if not (folder / CACHE_FILE).is_file():
        return None
    try:
        cached = read_json(folder / CACHE_FILE, "original image cache")
    except AnnaError:
        return None
    if any(cached.get(k) != v for k, v in key.items()) or not components <= set(cached.get("captures", [])):
        return None
    paths = [folder / f"{i:04d}.png" for i in range(n)]
    if not all(p.is_file() for p in paths):
        return None
    captures = {}
    for comp in components:
        cap = load_capture(folder, comp)
        if cap is None:
            return None
        captures[comp] = cap
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    return _Originals(images, captures)


def _generate_originals(
    model: Model,
    prompts: Sequence[str],
    settings: GenerationSettings,
    seed: int,
    components: set[str],
    calls: int,
    progress: bool,
) -> _Originals:
    import contextlib

    with contextlib.ExitStack() as stack:
        caps = {
            comp: stack.enter_context(capture_calls(model.component(comp), comp, calls, seed)) for comp in components
        }
        images = generate_images(model, prompts, settings, seed, progress=progress)
    return _Originals(images, caps)
