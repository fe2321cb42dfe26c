"""Attribute accuracy of evaluated images: the share whose shapes, colours, places and background match the prompt,
judged by the shapes domain's nearest-render classifier (`anna.domain.nearest`).

`add_accuracy(eval_dir)` reads `metrics.json` and the saved images of every row (the original and each
checkpoint, at each steps value) and writes `accuracy` (null with `accuracy_reason` when no prompt is in the domain)
and `accuracy_per_image` into the same rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from anna.artifacts import write_json
from anna.errors import AnnaError

METRICS_FILE = "metrics.json"


def _images(folder: Path, n: int) -> list[Image.Image]:
    out = []
    for i in range(n):
        path = folder / f"{i:04d}.png"
        if not path.is_file():
            raise AnnaError(f"attribute accuracy: missing image {path}")
        with Image.open(path) as im:
            out.append(im.convert("RGB"))
    return out


def add_accuracy(eval_dir: str | Path, judge: str = "shapes-nearest") -> dict[str, Any]:
    """Score every row of `eval_dir/metrics.json` with the domain judge; rewrite and return it."""
    from anna.domain import nearest
    from anna.evaluate.evaluate import load_metrics

    if judge != "shapes-nearest":
        raise AnnaError(f"unknown attribute judge '{judge}' (known: shapes-nearest)")

    eval_dir = Path(eval_dir)
    metrics = load_metrics(eval_dir / METRICS_FILE)
    prompts = list(metrics.get("prompt_texts") or [])
    for row in [*metrics.get("original", []), *metrics.get("entries", [])]:
        flags = nearest.correct(_images(eval_dir / row["images"], len(prompts)), prompts)
        known = [f for f in flags if f is not None]
        row["accuracy_per_image"] = flags
        row["accuracy"] = sum(known) / len(known) if known else None
        row["accuracy_reason"] = None if known else "no prompt is in the shapes domain"
    metrics["accuracy_judge"] = judge
    write_json(eval_dir / METRICS_FILE, metrics)
    return metrics
