"""The shapes domain's attribute classifier (in the spirit of GenEval): does an image show what its caption says?

A small CNN reads a 64x64 image and predicts, for each of the five slots, empty or (shape, colour), plus the
background colour. An image is correct when every slot and the background match the caption's `Scene`. Weights are
safetensors with a JSON config; nothing is unpickled.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from anna.domain import shapes
from anna.errors import AnnaError

SLOT_CLASSES = 1 + len(shapes.SHAPES) * len(shapes.COLOURS)
WEIGHTS, CONFIG = "judge.safetensors", "config.json"


class AttributeClassifier(nn.Module):
    """uint8 or float NCHW images -> (N, slots * SLOT_CLASSES + colours) logits."""

    def __init__(self, width: int = 32, size: int = shapes.SIZE) -> None:
        super().__init__()
        self.width, self.size = width, size
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w // 2, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w // 2, w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GELU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * (size // 8) ** 2, 128), nn.GELU(),
                                  nn.Linear(128, len(shapes.SLOTS) * SLOT_CLASSES + len(shapes.COLOURS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 127.5 - 1.0
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return self.head(self.features(x))


def targets(scenes: Sequence[shapes.Scene]) -> torch.Tensor:
    """(N, slots + 1) class indices: per-slot labels then the background colour."""
    names = list(shapes.COLOURS)
    return torch.tensor([s.slot_labels() + [names.index(s.background)] for s in scenes])


def loss_of(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    n = len(shapes.SLOTS)
    slots = logits[:, : n * SLOT_CLASSES].reshape(-1, n, SLOT_CLASSES)
    return F.cross_entropy(slots.reshape(-1, SLOT_CLASSES), target[:, :n].reshape(-1)) + F.cross_entropy(
        logits[:, n * SLOT_CLASSES :], target[:, n])


def predict(logits: torch.Tensor) -> torch.Tensor:
    """(N, slots + 1) predicted class indices."""
    n = len(shapes.SLOTS)
    slots = logits[:, : n * SLOT_CLASSES].reshape(-1, n, SLOT_CLASSES).argmax(-1)
    return torch.cat([slots, logits[:, n * SLOT_CLASSES :].argmax(-1, keepdim=True)], dim=1)


def save(model: AttributeClassifier, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()},
              str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps({"width": model.width, "size": model.size}))
    return folder


def load(folder: str | Path) -> AttributeClassifier:
    """The classifier from its folder (safetensors + JSON)."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        raise AnnaError(f"attribute classifier not found in {folder}")
    cfg = json.loads((folder / CONFIG).read_text())
    model = AttributeClassifier(int(cfg["width"]), int(cfg["size"]))
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / WEIGHTS)).items()})
    return model.eval()


def _tensor(images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
    arrs = [np.asarray(im.convert("RGB") if isinstance(im, Image.Image) else im, dtype=np.uint8) for im in images]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def correct(model: AttributeClassifier, images: Sequence[Image.Image | np.ndarray],
            prompts: Sequence[str]) -> list[bool | None]:
    """Per image: does it show every attribute of its prompt? None for a prompt outside the domain."""
    if len(images) != len(prompts):
        raise AnnaError(f"attribute accuracy: {len(images)} images for {len(prompts)} prompts")
    out: list[bool | None] = [None] * len(prompts)
    known = [i for i, p in enumerate(prompts) if _known(p)]
    if not known:
        return out
    pred = predict(model(_tensor([images[i] for i in known])))
    want = targets([shapes.scene_of(prompts[i]) for i in known])
    for j, i in enumerate(known):
        out[i] = bool((pred[j] == want[j]).all())
    return out


def _known(prompt: str) -> bool:
    try:
        shapes.scene_of(prompt)
        return True
    except KeyError:
        return False


def accuracy(model: AttributeClassifier, images: Sequence[Image.Image | np.ndarray],
             prompts: Sequence[str]) -> float | None:
    """Share of in-domain prompts whose image is correct; None when no prompt is in the domain."""
    flags = [f for f in correct(model, images, prompts) if f is not None]
    return float(np.mean(flags)) if flags else None
