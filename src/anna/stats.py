"""Activation statistics: what calibration measures and the options read (the ground floor: imports no stage)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ActStats:
    """Statistics of every finite activation value an observer saw."""

    min: float
    max: float
    absmax: float
    percentiles: dict[str, float] = field(default_factory=dict)
    count: int = 0
    nonfinite: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: min, max, absmax, percentiles {"1".."99"}, count, nonfinite."""
        return {
            "min": self.min,
            "max": self.max,
            "absmax": self.absmax,
            "percentiles": dict(self.percentiles),
            "count": self.count,
            "nonfinite": self.nonfinite,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ActStats:
        """Inverse of :meth:`to_json`."""
        return cls(
            min=float(data["min"]),
            max=float(data["max"]),
            absmax=float(data["absmax"]),
            percentiles={str(k): float(v) for k, v in data["percentiles"].items()},
            count=int(data.get("count", 0)),
            nonfinite=int(data.get("nonfinite", 0)),
        )
