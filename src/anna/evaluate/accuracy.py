"""Attribute accuracy of evaluated images: the share whose shapes, colours, places and background match the prompt,
judged by a domain classifier (`anna.domain.judge`, shipped with `tiny-t2i`).

`add_accuracy(eval_dir, judge_dir)` reads `metrics.json` and the saved images of every row (the original and each
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


def add_accuracy(eval_dir: str | Path, judge_dir: str | Path) -> dict[str, Any]:
    """Score every row of `eval_dir/metrics.json` with the classifier in `judge_dir`; rewrite and return it."""
    from anna.domain import judge
    from anna.evaluate.evaluate import load_metrics

    eval_dir = Path(eval_dir)
    metrics = load_metrics(eval_dir / METRICS_FILE)
    prompts = list(metrics.get("prompt_texts") or [])
    model = judge.load(judge_dir)
    for row in [*metrics.get("original", []), *metrics.get("entries", [])]:
        flags = judge.correct(model, _images(eval_dir / row["images"], len(prompts)), prompts)
        known = [f for f in flags if f is not None]
        row["accuracy_per_image"] = flags
        row["accuracy"] = sum(known) / len(known) if known else None
        row["accuracy_reason"] = None if known else "no prompt is in the shapes domain"
    metrics["accuracy_judge"] = str(Path(judge_dir).resolve())
    write_json(eval_dir / METRICS_FILE, metrics)
    return metrics
