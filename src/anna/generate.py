"""Plain generation: one PNG per prompt, seeded per prompt so the same seed gives byte-identical files."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from anna.adapters.base import GenerationSettings, Model
from anna.artifacts import write_bytes, write_text


def generate_images(
    model: Model, prompts: Sequence[str], settings: GenerationSettings, seed: int = 0, progress: bool = True
) -> list[Image.Image]:
    """Run the pipeline once per prompt with generator seed `seed + index` (a CPU generator, so any device agrees
    on the initial noise)."""
    model.require_weights("generate")
    pipe = model.pipeline
    images = []
    for i, prompt in enumerate(tqdm(prompts, desc="generate", unit="prompt", disable=not progress)):
        generator = torch.Generator("cpu").manual_seed(seed + i)
        with torch.inference_mode():
            out = pipe(
                prompt=prompt,
                num_inference_steps=settings.steps,
                guidance_scale=settings.guidance,
                height=settings.height,
                width=settings.width,
                generator=generator,
            )
        images.append(out.images[0])
    return images


def save_png(image: Image.Image, path: Path) -> Path:
    """Atomic PNG write."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def generate_to_dir(
    model: Model, prompts: Sequence[str], out_dir: str | Path, settings: GenerationSettings, seed: int = 0
) -> list[Path]:
    """Write `0000.png`, `0001.png`, ... one per prompt, and `prompts.txt` beside them."""
    out = Path(out_dir)
    images = generate_images(model, prompts, settings, seed)
    paths = [save_png(img, out / f"{i:04d}.png") for i, img in enumerate(images)]
    write_text(out / "prompts.txt", "\n".join(prompts) + "\n")
    return paths
