"""Model adapters: `load_model(spec)` for the CLI's `--model`, `from_module` for any PyTorch module."""

from __future__ import annotations

from anna.adapters.base import PIPELINE_COMPONENTS, GenerationSettings, Model
from anna.adapters.generic import from_module
from anna.errors import AnnaError

BUILTIN = ("tiny-t2i", "tiny-sdxl", "sdxl")


def load_model(spec: str) -> Model:
    """`tiny-t2i` (trained, shipped), `tiny-sdxl` (random), `sdxl` (meta device), a local diffusers folder or a hub
    id (`owner/name`)."""
    from pathlib import Path

    if spec == "tiny-t2i":
        from anna.adapters import tiny_t2i

        return tiny_t2i.load()

    if spec == "tiny-sdxl":
        from anna.adapters import tiny

        return tiny.load()
    if spec == "sdxl":
        from anna.adapters import sdxl_meta

        return sdxl_meta.load()
    if Path(spec).expanduser().exists() or _looks_like_hub_id(spec):
        from anna.adapters import hub

        return hub.load(spec)
    raise AnnaError(
        f"unknown model '{spec}': use one of {', '.join(BUILTIN)}, a hub id such as stabilityai/sdxl-turbo, "
        "or a local diffusers folder"
    )


def builtin_prompts(spec: str) -> list[str] | None:
    """A built-in model's own default prompts (tiny-t2i: held-out captions 200-399 of its domain, never trained on;
    `bench/tiny_t2i.py` scores the first 200); None for the others."""
    if spec == "tiny-t2i":
        from anna.domain.shapes import held_out_prompts

        return held_out_prompts(400)[200:]
    return None


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


__all__ = ["PIPELINE_COMPONENTS", "GenerationSettings", "Model", "builtin_prompts", "from_module", "load_model"]
