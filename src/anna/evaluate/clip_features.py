"""A CLIP image tower as an FID feature extractor: uint8 NCHW images in, (N, projection_dim) embeddings out.

torchmetrics' `FrechetInceptionDistance` takes any `nn.Module` with a `num_features`; this one resizes to the CLIP's
image size, normalises with its processor's mean and std and returns `get_image_features`. It lets FID run offline
with a domain CLIP (such as the shipped `tiny-t2i` one): `--fid-weights DIR` with a transformers CLIPModel folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def is_clip_folder(path: str | Path) -> bool:
    """A folder holding a transformers CLIPModel (config.json with model_type 'clip')."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "clip"
    except (OSError, ValueError):
        return False


class ClipImageFeatures(nn.Module):
    """The image tower of a CLIPModel, on uint8 images of any size."""

    def __init__(self, clip: nn.Module, mean: tuple[float, ...] = OPENAI_MEAN, std: tuple[float, ...] = OPENAI_STD):
        super().__init__()
        self.clip = clip.eval().float()
        self.size = int(clip.config.vision_config.image_size)
        self.num_features = int(clip.config.projection_dim)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_folder(cls, folder: str | Path) -> ClipImageFeatures:
        from transformers import CLIPModel

        folder = Path(folder)
        clip = CLIPModel.from_pretrained(str(folder), use_safetensors=True)
        mean, std = OPENAI_MEAN, OPENAI_STD
        for name in ("preprocessor_config.json", "processor_config.json"):
            if (folder / name).is_file():
                cfg = json.loads((folder / name).read_text())
                cfg = cfg.get("image_processor", cfg)
                mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
                break
        return cls(clip, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
        out = self.clip.get_image_features(pixel_values=(x - self.mean) / self.std)
        out = out if isinstance(out, torch.Tensor) else out.pooler_output
        return out.float()
