"""Prompt sources: a text file (one prompt per line), a TSV with a `caption` column (optionally `FILE.tsv:A-B`,
1-based data rows, inclusive), or `hf:DATASET[:N]` when online."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from anna.errors import AnnaError

_RANGE = re.compile(r"^(?P<path>.+?):(?P<a>\d+)-(?P<b>\d+)$")


def load_prompts(spec: str) -> list[str]:
    """Read prompts; an empty result or a missing file is an error."""
    if spec.startswith("hf:"):
        prompts = _from_hub(spec[3:])
    else:
        path, rows = spec, None
        m = _RANGE.match(spec)
        if m and not Path(spec).exists():
            path, rows = m["path"], (int(m["a"]), int(m["b"]))
            if rows[0] < 1 or rows[1] < rows[0]:
                raise AnnaError(f"bad row range in '{spec}': use A-B with 1 <= A <= B")
        p = Path(path)
        if not p.is_file():
            raise AnnaError(f"prompt file not found: {path}")
        if p.suffix.lower() == ".tsv":
            prompts = _from_tsv(p, rows)
        else:
            if rows:
                raise AnnaError("row ranges apply to .tsv prompt files only")
            prompts = [line.strip() for line in p.read_text().splitlines() if line.strip()]
    if not prompts:
        raise AnnaError(f"no prompts in '{spec}'")
    return prompts


def _from_tsv(path: Path, rows: tuple[int, int] | None) -> list[str]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if not reader.fieldnames or "caption" not in reader.fieldnames:
            raise AnnaError(f"{path} has no 'caption' column (columns: {reader.fieldnames})")
        captions = [(r["caption"] or "").strip() for r in reader]
    if rows:
        if rows[0] > len(captions):
            raise AnnaError(f"{path} has {len(captions)} rows; range starts at {rows[0]}")
        captions = captions[rows[0] - 1 : rows[1]]
    return [c for c in captions if c]


def _from_hub(spec: str) -> list[str]:
    name, _, n = spec.partition(":")
    limit = int(n) if n else None
    try:
        from datasets import load_dataset
    except ImportError:
        raise AnnaError("hf: prompts need the 'datasets' package (pip install datasets)") from None
    try:
        ds = load_dataset(name, split="train" if limit is None else f"train[:{limit}]")
    except Exception as e:
        raise AnnaError(f"cannot load dataset '{name}': {type(e).__name__}: {str(e).splitlines()[0]}") from None
    column = next((c for c in ("caption", "prompt", "text") if c in ds.column_names), None)
    if column is None:
        raise AnnaError(f"dataset '{name}' has no caption/prompt/text column (columns: {ds.column_names})")
    return [str(x).strip() for x in ds[column] if str(x).strip()]
