"""A procedural captioned image domain: one or two flat shapes in named colours at named places on a coloured ground.

Every caption names its image exactly (fixed sizes and slot positions), so a caption-conditioned model can learn it
on a CPU. Images are `SIZE`x`SIZE` RGB, anti-aliased by 4x supersampling. An image's attributes are its `Scene`: the
background colour and, for each of the five slots (left, right, top, bottom, center), the shape and colour there or
nothing. The prompt list is fixed; a seeded shuffle holds out `HELD_OUT` prompts that training never sees.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SIZE = 64
SEED = 13
HELD_OUT = 400  # prompts training never sees; the bench scores the first 200 of them

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (40, 170, 50),
    "blue": (40, 70, 225),
    "yellow": (240, 215, 40),
    "purple": (140, 50, 180),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
SLOTS = ("left", "right", "top", "bottom", "center")
SLOT_XY: dict[str, tuple[float, float]] = {
    "left": (16, 32), "right": (48, 32), "top": (32, 16), "bottom": (32, 48), "center": (32, 32),
}
PLACE_WORDS = {"left": "at the left", "right": "at the right", "top": "at the top", "bottom": "at the bottom",
               "center": "in the center"}
RELATIONS: dict[str, tuple[str, str]] = {  # relation -> (slot of the first shape, slot of the second)
    "above": ("top", "bottom"), "below": ("bottom", "top"), "left of": ("left", "right"), "right of": ("right", "left"),
}
RADIUS = 10.0  # half the side of every shape, in pixels


@dataclass(frozen=True)
class Scene:
    """What an image shows: the background colour and `(slot, shape, colour)` for each shape, sorted by slot."""

    background: str
    objects: tuple[tuple[str, str, str], ...]

    def slot_labels(self) -> list[int]:
        """Per slot: 0 for empty, else 1 + shape index * len(COLOURS) + colour index (the classifier's targets)."""
        names = list(COLOURS)
        out = [0] * len(SLOTS)
        for slot, shape, colour in self.objects:
            out[SLOTS.index(slot)] = 1 + SHAPES.index(shape) * len(names) + names.index(colour)
        return out


def _shape_phrase(shape: str, colour: str) -> str:
    return f"a {colour} {shape}"


def all_scenes() -> list[tuple[str, Scene]]:
    """Every (caption, scene) of the domain, in a fixed order."""
    out: list[tuple[str, Scene]] = []
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    for bg in COLOURS:
        for shape, colour in pairs:
            if colour == bg:
                continue
            for slot in SLOTS:
                caption = f"{_shape_phrase(shape, colour)} {PLACE_WORDS[slot]} on a {bg} background"
                out.append((caption, Scene(bg, ((slot, shape, colour),))))
            for s1, c1 in pairs:
                if c1 == bg or (s1, c1) == (shape, colour):
                    continue
                for rel, (a, b) in RELATIONS.items():
                    caption = f"{_shape_phrase(shape, colour)} {rel} {_shape_phrase(s1, c1)} on a {bg} background"
                    objs = tuple(sorted(((a, shape, colour), (b, s1, c1)), key=lambda o: SLOTS.index(o[0])))
                    out.append((caption, Scene(bg, objs)))
    return out


@lru_cache(maxsize=1)
def split() -> tuple[tuple[tuple[str, Scene], ...], tuple[tuple[str, Scene], ...]]:
    """(train, held_out): a seeded shuffle of every caption; the first `HELD_OUT` are held out."""
    scenes = all_scenes()
    order = list(range(len(scenes)))
    random.Random(SEED).shuffle(order)
    held = tuple(scenes[i] for i in order[:HELD_OUT])
    train = tuple(scenes[i] for i in order[HELD_OUT:])
    return train, held


def held_out_prompts(n: int = 200) -> list[str]:
    """The first `n` held-out captions (never trained on)."""
    return [c for c, _ in split()[1][:n]]


def scene_of(caption: str) -> Scene:
    """The scene a caption names; an unknown caption is a `KeyError`."""
    return _index()[caption.strip().lower().rstrip(".")]


@lru_cache(maxsize=1)
def _index() -> dict[str, Scene]:
    return dict(all_scenes())


def _mask(shape: str, cx: float, cy: float, n: int, k: int) -> np.ndarray:
    """Coverage mask (n x n, values 0..1) of a shape, supersampled k x k per pixel."""
    m = n * k
    c = (np.arange(m) + 0.5) / k
    x, y = np.meshgrid(c, c)
    r = RADIUS
    if shape == "circle":
        inside = (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    elif shape == "square":
        inside = (np.abs(x - cx) <= r * 0.9) & (np.abs(y - cy) <= r * 0.9)
    else:  # triangle, apex up
        top, base = cy - r, cy + r
        half = (y - top) / (2 * r) * r * 1.15
        inside = (y >= top) & (y <= base) & (np.abs(x - cx) <= half)
    return inside.reshape(n, k, n, k).mean(axis=(1, 3))


def render(scene: Scene, size: int = SIZE, supersample: int = 4) -> np.ndarray:
    """The scene as an HxWx3 uint8 array."""
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = COLOURS[scene.background]
    scale = size / SIZE
    for slot, shape, colour in scene.objects:
        cx, cy = SLOT_XY[slot]
        a = _mask(shape, cx * scale, cy * scale, size, supersample)[..., None]
        img = img * (1 - a) + np.asarray(COLOURS[colour], dtype=np.float64) * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_caption(caption: str) -> np.ndarray:
    return render(scene_of(caption))


def vocabulary() -> list[str]:
    """Every word of the domain's captions, sorted."""
    return sorted({w for c, _ in all_scenes() for w in c.split()})
