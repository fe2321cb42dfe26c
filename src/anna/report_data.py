"""The report's data: what it reads from the run folder, with a note for what is missing or unreadable (moved from
`anna.report`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anna.artifacts import read_json
from anna.errors import AnnaError
from anna.plan import Plan


def _read_optional(path: Path, what: str, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return read_json(path, what)
    except AnnaError as e:
        notes.append(str(e))
        return None


def _first(run: Path, names: Sequence[str]) -> Path | None:
    return next((run / n for n in names if (run / n).is_file()), None)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _plans(run: Path, notes: list[str]) -> list[dict[str, Any]]:
    out = []
    for p in sorted((run / "plans").glob("*.json")) if (run / "plans").is_dir() else []:
        try:
            out.append({**Plan.read(p).to_json(), "_path": str(p)})
        except AnnaError as e:
            notes.append(str(e))
    return out


def activation_ranges(stats: Mapping[str, Any]) -> list[tuple[str, str, float, float, float]]:
    """(unit, kind, absmax, p99 magnitude, p90 magnitude) of every unit's input, in the order of stats.json; the
    magnitudes are max(|p1|, |p99|) and max(|p10|, |p90|). Units without input statistics are left out."""
    out = []
    for name, entry in (stats.get("units") or {}).items():
        act = entry.get("input") if isinstance(entry, Mapping) else None
        pct = (act or {}).get("percentiles") or {}
        vals = [_num(v) for v in ((act or {}).get("absmax"), pct.get("1"), pct.get("99"), pct.get("10"), pct.get("90"))]
        if any(v is None for v in vals):
            continue
        absmax, p1, p99, p10, p90 = vals
        out.append((name, str(entry.get("kind", "")), absmax, max(abs(p1), abs(p99)), max(abs(p10), abs(p90))))
    return out


def _fmt(v: Any, spec: str = ".4g") -> str:
    x = _num(v)
    return "n/a" if x is None else format(x, spec)
