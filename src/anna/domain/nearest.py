"""Attribute accuracy by the nearest render: a 1-nearest-neighbour classifier over every scene of the shapes domain.

An image is judged to show the scene whose exact render is closest to it in pixel L2 after 2x2 average pooling
(which forgives soft edges); it is correct when that scene (shapes, colours, places, background) is its prompt's.
The domain's 5,490 renders are the classifier's training set; nothing is learned beyond them and nothing is shipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anna.domain import shapes
from anna.errors import AnnaError


def _pool(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x.float(), 2).flatten(1)


@lru_cache(maxsize=1)
def _bank() -> tuple[tuple[shapes.Scene, ...], torch.Tensor, torch.Tensor]:
    scenes = tuple(s for _, s in shapes.all_scenes())
    unique = tuple(dict.fromkeys(scenes))  # "A above B" and "B below A" are one scene
    x = torch.from_numpy(np.stack([shapes.render(s) for s in unique])).permute(0, 3, 1, 2)
    feats = _pool(x)
    return unique, feats, (feats * feats).sum(1)


@torch.inference_mode()
def predict(images: Sequence[Image.Image | np.ndarray]) -> list[shapes.Scene]:
    """The nearest domain scene of each image."""
    scenes, bank, norms = _bank()
    arrs = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im, dtype=np.uint8) for im in images]
    x = _pool(torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2))
    d = norms[None, :] - 2 * x @ bank.T
    return [scenes[int(i)] for i in d.argmin(1)]


def correct(images: Sequence[Image.Image | np.ndarray], prompts: Sequence[str]) -> list[bool | None]:
    """Per image: is its nearest scene the prompt's? None for a prompt outside the domain."""
    if len(images) != len(prompts):
        raise AnnaError(f"attribute accuracy: {len(images)} images for {len(prompts)} prompts")
    known = [i for i, p in enumerate(prompts) if p.strip().lower().rstrip(".") in shapes._index()]
    out: list[bool | None] = [None] * len(prompts)
    if known:
        for i, scene in zip(known, predict([images[i] for i in known]), strict=True):
            out[i] = scene == shapes.scene_of(prompts[i])
    return out


def accuracy(images: Sequence[Image.Image | np.ndarray], prompts: Sequence[str]) -> float | None:
    """Share of in-domain prompts whose image shows their scene; None when none is in the domain."""
    flags = [f for f in correct(images, prompts) if f is not None]
    return float(np.mean(flags)) if flags else None
