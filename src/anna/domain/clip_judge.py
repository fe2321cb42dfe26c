"""Attribute accuracy by the domain CLIP, zero-shot: an image is correct when the domain caption CLIP ranks first
among all 5,490 names the same scene (shapes, colours, places, background) as its prompt."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from anna.domain import shapes
from anna.errors import AnnaError


class ClipJudge:
    """Zero-shot scene recognition with a CLIPModel folder (the shipped tiny-t2i CLIP)."""

    def __init__(self, folder: str | Path) -> None:
        from anna.evaluate.clip_features import ClipImageFeatures

        self.images = ClipImageFeatures.from_folder(folder)
        self.folder = Path(folder)

    @cached_property
    def _captions(self) -> tuple[list[str], torch.Tensor]:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(self.folder))
        caps = [c for c, _ in shapes.all_scenes()]
        feats = []
        with torch.inference_mode():
            for i in range(0, len(caps), 512):
                ids = tok(caps[i : i + 512], padding="max_length", max_length=tok.model_max_length, truncation=True,
                          return_tensors="pt")
                out = self.images.clip.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
                out = out if isinstance(out, torch.Tensor) else out.pooler_output
                feats.append(torch.nn.functional.normalize(out.float(), dim=-1))
        return caps, torch.cat(feats)

    @torch.inference_mode()
    def predict(self, images: Sequence[Image.Image | np.ndarray]) -> list[shapes.Scene]:
        caps, text = self._captions
        arrs = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im, dtype=np.uint8) for im in images]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
        feats = torch.nn.functional.normalize(self.images(x), dim=-1)
        return [shapes.scene_of(caps[int(i)]) for i in (feats @ text.T).argmax(-1)]

    def correct(self, images: Sequence[Image.Image | np.ndarray], prompts: Sequence[str]) -> list[bool | None]:
        """Per image: does CLIP's best domain caption name the prompt's scene? None for a prompt outside the domain."""
        if len(images) != len(prompts):
            raise AnnaError(f"attribute accuracy: {len(images)} images for {len(prompts)} prompts")
        known = [i for i, p in enumerate(prompts) if p.strip().lower().rstrip(".") in shapes._index()]
        out: list[bool | None] = [None] * len(prompts)
        for i, scene in zip(known, self.predict([images[i] for i in known]) if known else [], strict=True):
            out[i] = scene == shapes.scene_of(prompts[i])
        return out

    def accuracy(self, images: Sequence[Image.Image | np.ndarray], prompts: Sequence[str]) -> float | None:
        flags = [f for f in self.correct(images, prompts) if f is not None]
        return float(np.mean(flags)) if flags else None
