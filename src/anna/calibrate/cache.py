"""A bounded cache of a component's own inputs, so a later stage can re-run the component alone.

Which forward calls are kept is decided up front and deterministically (a resumed run keeps the same ones): the
(item, call) grid (item: prompt or batch; call: the component's call index within the item, the step for a UNet) is
walked step-major and `cache_samples` positions are spread evenly over it, each step's row rotated so that the
samples also spread over the prompts. A byte limit thins the plan evenly after the first sample shows its size; a
limit too small for one sample is an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from anna.calibrate.tree import flatten, tensor_bytes
from anna.errors import AnnaError

MB = 1 << 20


def plan_samples(
    n_items: int, calls_per_item: int, cache_samples: int, cache_steps: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """The sorted (item, call) pairs to keep: `cache_samples` of them (or all, if fewer exist)."""
    if cache_samples < 1:
        raise AnnaError(f"cache_samples must be at least 1, got {cache_samples}: later stages need cached inputs")
    steps = list(range(calls_per_item)) if cache_steps is None else sorted(set(cache_steps))
    bad = [s for s in steps if not 0 <= s < calls_per_item]
    if bad or not steps:
        raise AnnaError(f"cache steps {bad or '[]'} out of range: this component has calls 0..{calls_per_item - 1}")
    total = len(steps) * n_items
    k = min(cache_samples, total)
    picks = []
    for i in range(k):
        pos = int((i + 0.5) * total / k)
        row, col = divmod(pos, n_items)
        picks.append(((col + row) % n_items, steps[row]))
    return sorted(picks)


def thin(plan: Sequence[tuple[int, int]], keep: int) -> list[tuple[int, int]]:
    """`keep` entries of `plan` spread evenly, always including the first."""
    n = len(plan)
    return [plan[i * n // keep] for i in range(keep)] if keep < n else list(plan)


@dataclass
class InputCache:
    """Captured samples: a JSON skeleton per sample and its tensors under `sN.` keys."""

    plan: list[tuple[int, int]]
    limit_bytes: int | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    tensors: dict[str, Tensor] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._wanted = set(self.plan)

    def wants(self, item: int, call: int) -> bool:
        return (item, call) in self._wanted

    @property
    def nbytes(self) -> int:
        return tensor_bytes(self.tensors)

    def add(self, item: int, call: int, value: Any) -> None:
        """Store `value` (an `(args, kwargs)` pair or a batch) as the sample for (item, call), within the limit."""
        prefix = f"s{len(self.samples)}"
        skeleton, tensors = flatten(value, prefix)
        size = tensor_bytes(tensors)
        if self.limit_bytes is not None:
            if size > self.limit_bytes:
                raise AnnaError(
                    f"cache limit {self.limit_bytes / MB:.3g} MB is too small for one cached input "
                    f"({size / MB:.3g} MB); raise --cache-mb"
                )
            if not self.samples:
                self.plan = thin(self.plan, min(len(self.plan), self.limit_bytes // size))
                self._wanted = set(self.plan)
            if (item, call) not in self._wanted:
                return
            if self.nbytes + size > self.limit_bytes:
                self.skipped.append({"item": item, "call": call, "bytes": size, "reason": "cache limit reached"})
                return
        self.samples.append({"item": item, "call": call, "value": skeleton, "bytes": size})
        self.tensors.update(tensors)

    def to_json(self) -> dict[str, Any]:
        return {
            "plan": [list(p) for p in self.plan],
            "limit_bytes": self.limit_bytes,
            "samples": self.samples,
            "skipped": self.skipped,
            "bytes": self.nbytes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], tensors: dict[str, Tensor]) -> InputCache:
        cache = cls(plan=[(int(a), int(b)) for a, b in data["plan"]], limit_bytes=data["limit_bytes"])
        cache.samples = list(data["samples"])
        cache.skipped = list(data["skipped"])
        cache.tensors = dict(tensors)
        return cache
