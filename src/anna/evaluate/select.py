"""`anna select`: the smallest checkpoint of a sweep that meets every quality threshold at every evaluated steps value.

Thresholds compare a checkpoint with the original pipeline at the same steps value:
- `max_fid_increase`: FID(checkpoint) - FID(original) <= X (with the original as FID reference, FID(original) is 0);
- `min_clip_delta`: CLIP(checkpoint) - CLIP(original) >= Y (Y is usually negative: the largest drop allowed);
- `max_mse`: image MSE against the original on the 0-255 scale <= Z;
- `max_accuracy_drop`: attribute accuracy(original) - accuracy(checkpoint) <= W (`anna.evaluate.accuracy`).

A threshold whose metric is null cannot be met; the reason recorded by `evaluate` is repeated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anna.artifacts import write_json
from anna.errors import AnnaError
from anna.evaluate.evaluate import METRICS_FILE, load_metrics
from anna.plan import Plan


@dataclass(frozen=True)
class Thresholds:
    """Quality thresholds; None: not checked."""

    max_fid_increase: float | None = None
    min_clip_delta: float | None = None
    max_mse: float | None = None
    max_accuracy_drop: float | None = None

    def given(self) -> dict[str, float]:
        return {k: v for k, v in self.to_json().items() if v is not None}

    def to_json(self) -> dict[str, float | None]:
        return {"max_fid_increase": self.max_fid_increase, "min_clip_delta": self.min_clip_delta,
                "max_mse": self.max_mse, "max_accuracy_drop": self.max_accuracy_drop}


_LABEL = {"max_fid_increase": "FID increase", "min_clip_delta": "CLIP delta", "max_mse": "MSE",
          "max_accuracy_drop": "accuracy drop"}
_FLAG = {"max_fid_increase": "--max-fid-increase", "min_clip_delta": "--min-clip-delta", "max_mse": "--max-mse",
         "max_accuracy_drop": "--max-accuracy-drop"}
_METRIC = {"max_fid_increase": "fid", "min_clip_delta": "clip", "max_mse": "mse", "max_accuracy_drop": "accuracy"}


@dataclass(frozen=True)
class Check:
    """One threshold at one steps value: the measured value (a delta for FID and CLIP), pass/fail and margin."""

    threshold: str
    steps: int
    limit: float
    value: float | None
    note: str | None = None

    @property
    def is_max(self) -> bool:
        return self.threshold.startswith("max_")

    @property
    def margin(self) -> float | None:
        """How far inside the limit (negative: by how much it misses)."""
        if self.value is None:
            return None
        return self.limit - self.value if self.is_max else self.value - self.limit

    @property
    def passed(self) -> bool:
        return self.margin is not None and self.margin >= 0

    @property
    def shortfall(self) -> float:
        """Relative miss (0 when passed, inf when the metric is null)."""
        if self.margin is None:
            return math.inf
        return max(0.0, -self.margin) / max(abs(self.limit), 1.0)

    def describe(self) -> str:
        label = _LABEL[self.threshold]
        if self.value is None:
            return f"{label} at {self.steps} step(s) is unknown: {self.note}"
        op = ("<=" if self.is_max else ">=") if self.passed else (">" if self.is_max else "<")
        verdict = f"margin {self.margin:.4g}" if self.passed else f"misses by {-self.margin:.4g}"
        return f"{label} {self.value:.4g} {op} {self.limit:g} at {self.steps} step(s) ({verdict})"

    def to_json(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "steps": self.steps, "limit": self.limit, "value": self.value,
                "margin": self.margin, "passed": self.passed, "note": self.note}


@dataclass
class Candidate:
    """One checkpoint of the sweep with its checks."""

    checkpoint: str
    name: str
    size_ratio: float | None
    entries: dict[int, dict[str, Any]]
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def shortfall(self) -> float:
        return sum(c.shortfall for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def label(self) -> str:
        size = "unknown size" if self.size_ratio is None else f"size ratio {self.size_ratio:.4f}"
        return f"{self.name} ({size})"


@dataclass
class Selection:
    """The chosen checkpoint, why, and what was considered."""

    chosen: Candidate
    thresholds: Thresholds
    steps: list[int]
    candidates: list[Candidate]
    reason: str
    fp16_units: list[str] | None
    units: dict[str, str] | None
    component: str | None
    plan_note: str | None = None

    def to_json(self, eval_path: str | None = None) -> dict[str, Any]:
        c = self.chosen
        return {
            "checkpoint": c.checkpoint,
            "name": c.name,
            "size_ratio": c.size_ratio,
            "component": self.component,
            "eval": eval_path,
            "thresholds": self.thresholds.to_json(),
            "steps": self.steps,
            "reason": self.reason,
            "checks": [k.to_json() for k in c.checks],
            "metrics": {str(s): {k: e.get(k) for k in ("mse", "component_mse", "clip", "fid", "accuracy")}
                        for s, e in sorted(c.entries.items())},
            "fp16_units": self.fp16_units,
            "plan_note": self.plan_note,
            "candidates": [
                {"checkpoint": k.checkpoint, "name": k.name, "size_ratio": k.size_ratio, "passed": k.passed,
                 "failures": [f.describe() for f in k.failures]}
                for k in self.candidates
            ],
            "units": self.units,
        }


def _candidates(metrics: Mapping[str, Any]) -> tuple[list[Candidate], list[int]]:
    by_ckpt: dict[str, Candidate] = {}
    for e in metrics.get("entries", []):
        key = str(e.get("checkpoint"))
        cand = by_ckpt.setdefault(key, Candidate(key, e.get("name") or Path(key).name, e.get("size_ratio"), {}))
        cand.entries[int(e["steps"])] = e
        if cand.size_ratio is None:
            cand.size_ratio = e.get("size_ratio")
    steps = sorted({int(s) for s in metrics.get("steps", [])} | {s for c in by_ckpt.values() for s in c.entries})
    return list(by_ckpt.values()), steps


def _checks(cand: Candidate, thresholds: Thresholds, steps: list[int], originals: dict[int, dict[str, Any]]
            ) -> list[Check]:
    out: list[Check] = []
    for name, limit in thresholds.given().items():
        metric = _METRIC[name]
        for s in steps:
            e = cand.entries.get(s)
            if e is None:
                out.append(Check(name, s, limit, None, f"{cand.name} was not evaluated at {s} step(s)"))
                continue
            value = e.get(metric)
            if value is None:
                note = e.get(f"{metric}_reason") or f"{metric} is null"
                out.append(Check(name, s, limit, None, f"{metric} is null ({note})"))
                continue
            if metric == "mse":
                out.append(Check(name, s, limit, float(value)))
                continue
            orig = originals.get(s, {})
            base = orig.get(metric)
            if base is None:
                why = orig.get(f"{metric}_reason") or f"the original was not evaluated at {s} step(s)"
                out.append(Check(name, s, limit, None, f"the original's {metric} is null ({why})"))
                continue
            delta = float(base) - float(value) if metric == "accuracy" else float(value) - float(base)
            out.append(Check(name, s, limit, delta))
    return out


def _plan_units(cand: Candidate) -> tuple[dict[str, str] | None, str | None, str | None]:
    """(units, component, note) from the checkpoint's plan.json; falls back to the evaluated entry."""
    path = Path(cand.checkpoint) / "plan.json"
    try:
        plan = Plan.read(path, "checkpoint plan")
        return dict(plan.units), plan.component, None
    except AnnaError as e:
        any_entry = next(iter(cand.entries.values()), {})
        return None, any_entry.get("component"), str(e)


def select_checkpoint(metrics: Mapping[str, Any] | str | Path, thresholds: Thresholds) -> Selection:
    """The smallest checkpoint (by size ratio) meeting every given threshold at every evaluated steps value.

    No checkpoints, or none that passes, is an `AnnaError`; the latter names the closest one and by how much it
    misses.
    """
    data = metrics if isinstance(metrics, Mapping) else load_metrics(metrics)
    cands, steps = _candidates(data)
    if not cands:
        raise AnnaError("no checkpoints to select from: the evaluation has no entries (run anna evaluate with "
                        "--checkpoint)")
    originals = {int(o["steps"]): o for o in data.get("original", [])}
    for c in cands:
        c.checks = _checks(c, thresholds, steps, originals)
    cands.sort(key=lambda c: (c.size_ratio is None, c.size_ratio if c.size_ratio is not None else 0.0,
                              max((e.get("mse") or 0.0) for e in c.entries.values()), c.name))
    passing = [c for c in cands if c.passed]
    given = thresholds.given()
    if not passing:
        closest = min(cands, key=lambda c: (c.shortfall, len(c.failures)))
        misses = "; ".join(f.describe() for f in closest.failures)
        wanted = ", ".join(f"{_FLAG[k]} {v:g}" for k, v in given.items())
        raise AnnaError(f"no checkpoint of {len(cands)} meets {wanted} at steps {', '.join(map(str, steps))}; "
                        f"closest: {closest.label()}: {misses}")
    chosen = passing[0]
    smaller = [c for c in cands[: cands.index(chosen)] if not c.passed]
    if given:
        passed = "; ".join(k.describe() for k in chosen.checks)
        reason = (f"smallest of {len(cands)} checkpoint(s) that meets every threshold at steps "
                  f"{', '.join(map(str, steps))}: {chosen.label()}: {passed}")
    else:
        reason = f"no thresholds given: the smallest of {len(cands)} checkpoint(s), {chosen.label()}"
    if smaller:
        reason += "; smaller ones fail: " + "; ".join(
            f"{c.label()}: {c.failures[0].describe()}" for c in smaller[:3]
        ) + ("" if len(smaller) <= 3 else f"; and {len(smaller) - 3} more")
    units, component, note = _plan_units(chosen)
    if units is not None:
        fp16 = [u for u, o in units.items() if o == "fp16"]
    else:
        fp16 = next((e.get("fp16_units") for e in chosen.entries.values() if e.get("fp16_units") is not None), None)
    return Selection(chosen, thresholds, steps, cands, reason, fp16, units, component, note)


def write_selection(selection: Selection, out: str | Path, eval_path: str | Path | None = None) -> Path:
    """Write `selected.json` (atomic)."""
    return write_json(out, selection.to_json(str(eval_path) if eval_path is not None else None))


def select_to_file(eval_dir: str | Path, thresholds: Thresholds, out: str | Path) -> Selection:
    """Read `eval_dir/metrics.json` (or a metrics.json path), select, write `out`."""
    p = Path(eval_dir)
    metrics_path = p / METRICS_FILE if p.is_dir() else p
    selection = select_checkpoint(load_metrics(metrics_path), thresholds)
    write_selection(selection, out, metrics_path.resolve())
    return selection
