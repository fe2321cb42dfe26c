"""A Hugging Face hub id or a local diffusers folder (SDXL, SDXL-Turbo): fp16 on GPU, fp32 on CPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from anna.adapters.base import GenerationSettings, Model, pipeline_components
from anna.errors import AnnaError

# SDXL-Turbo samples in 1-4 steps without guidance; SDXL base follows the published recipe.
TURBO_DEFAULTS = GenerationSettings(steps=1, guidance=0.0, height=512, width=512)
SDXL_DEFAULTS = GenerationSettings(steps=20, guidance=8.0, height=1024, width=1024)


def _cause(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def load(spec: str, device: str | None = None) -> Model:
    """Load a diffusers pipeline with `from_pretrained`. Any failure becomes one line naming the id and the cause."""
    from diffusers import DiffusionPipeline

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device == "cuda" else torch.float32
    local = Path(spec).expanduser()
    if local.exists() and not local.is_dir():
        raise AnnaError(f"'{spec}' is a file, not a folder: give a local diffusers folder (with model_index.json)")
    if local.exists() and not (local / "model_index.json").is_file():
        raise AnnaError(f"'{spec}' is a folder but not a diffusers pipeline (no model_index.json)")
    try:
        with warnings.catch_warnings():  # newer diffusers renames torch_dtype to dtype; both work
            warnings.simplefilter("ignore", FutureWarning)
            pipe = DiffusionPipeline.from_pretrained(str(local) if local.exists() else spec, torch_dtype=dtype)
    except Exception as e:  # hub, network and format errors all end here
        raise AnnaError(f"cannot load model '{spec}': {_cause(e)}") from None
    if not hasattr(pipe, "unet") or not hasattr(pipe, "vae"):
        raise AnnaError(f"model '{spec}' is a {type(pipe).__name__}, not an SDXL-type pipeline with a UNet and a VAE")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    defaults = TURBO_DEFAULTS if "turbo" in spec.lower() else SDXL_DEFAULTS
    return Model(name=spec, components=pipeline_components(pipe), pipeline=pipe, defaults=defaults)
