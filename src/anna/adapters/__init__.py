"""Model adapters: `load_model(spec)` for the CLI's `--model`, `from_module` for any PyTorch module."""

from __future__ import annotations

from anna.adapters.base import PIPELINE_COMPONENTS, GenerationSettings, Model
from anna.adapters.generic import from_module
from anna.errors import AnnaError

BUILTIN = ("tiny-sdxl", "sdxl")


def load_model(spec: str) -> Model:
    """`tiny-sdxl`, `sdxl` (meta device), a local diffusers folder or a hub id (`owner/name`)."""
    from pathlib import Path

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


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") for p in parts)


__all__ = ["PIPELINE_COMPONENTS", "GenerationSettings", "Model", "from_module", "load_model"]
