"""The run folder: the one place that names every artifact a stage writes, and the digests that say what is stale.

```
RUN/run.json                        calibration record (model, component, settings, prompts, calibration_hash)
RUN/calibration/stats.json          per-unit activation statistics        (+ stats.safetensors: histogram states)
RUN/calibration/inputs.json         cached component inputs               (+ inputs.safetensors)
RUN/calibration/progress.safetensors  only while a calibration is unfinished
RUN/analysis/error_model.json       error model, with the digest of the calibration it was built from
RUN/analysis/validation.json        predicted against measured MSE
RUN/plans/size-0.550.json           one plan per budget (plans/baselines/METHOD-size-0.550.json)
RUN/front.json                      the front, with the digest of its inputs (analysis + search settings)
RUN/checkpoints/size-0.550/         model.safetensors + plan.json (its "inputs": plan file + calibration digests)
RUN/eval/metrics.json, RUN/selected.json, RUN/report.html
```

Every stage records a digest of its inputs and redoes its work when they change; an unchanged stage is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def digest(obj: Any) -> str:
    """A short, stable digest of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """A short digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def plan_name(ratio: float) -> str:
    """`size-0.501` for a budget with at most 3 decimals; otherwise every digit it needs (`size-0.5015`), so that
    budgets that differ never share a plan file."""
    ratio = float(ratio)
    return f"size-{ratio:.3f}" if round(ratio, 3) == ratio else f"size-{ratio!r}"


@dataclass(frozen=True)
class RunFolder:
    """Paths of a run folder's artifacts (one model, one component per folder)."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    # calibration
    @property
    def run_json(self) -> Path:
        return self.root / "run.json"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration"

    @property
    def stats_json(self) -> Path:
        return self.calibration / "stats.json"

    @property
    def stats_tensors(self) -> Path:
        return self.calibration / "stats.safetensors"

    @property
    def inputs_json(self) -> Path:
        return self.calibration / "inputs.json"

    @property
    def inputs_tensors(self) -> Path:
        return self.calibration / "inputs.safetensors"

    @property
    def progress(self) -> Path:
        return self.calibration / "progress.safetensors"

    # analysis
    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    @property
    def error_model_json(self) -> Path:
        return self.analysis / "error_model.json"

    @property
    def error_model_tensors(self) -> Path:
        return self.analysis / "error_model.safetensors"

    @property
    def validation_json(self) -> Path:
        return self.analysis / "validation.json"

    @property
    def partial_json(self) -> Path:
        return self.analysis / "partial.json"

    @property
    def partial_tensors(self) -> Path:
        return self.analysis / "partial.safetensors"

    # search
    @property
    def plans(self) -> Path:
        return self.root / "plans"

    def plan(self, ratio: float, method: str = "anna") -> Path:
        """`plans/size-0.550.json` for anna's plan, `plans/baselines/METHOD-size-0.550.json` for a baseline."""
        if method == "anna":
            return self.plans / f"{plan_name(ratio)}.json"
        return self.plans / "baselines" / f"{method}-{plan_name(ratio)}.json"

    @property
    def front_json(self) -> Path:
        return self.root / "front.json"

    # export, evaluation, selection, report
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, ratio: float) -> Path:
        return self.checkpoints / plan_name(ratio)

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def selected_json(self) -> Path:
        return self.root / "selected.json"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    def calibration_digest(self) -> str | None:
        """The digest of the finished calibration (None when there is none)."""
        if not self.run_json.is_file():
            return None
        try:
            return json.loads(self.run_json.read_text()).get("calibration_hash")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
