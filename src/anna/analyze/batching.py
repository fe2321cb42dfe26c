"""Merge cached component inputs into larger batches, so that thousands of analysis runs pay the per-call overhead
once per batch rather than once per sample. Samples merge when every tensor has the same shape beyond the batch
dimension and every non-tensor leaf is equal; 0-d tensors (a UNet timestep) are expanded to the batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def _leaves(obj: Any) -> list[Any]:
    if isinstance(obj, dict):
        return [x for k in sorted(obj) for x in _leaves(obj[k])]
    if isinstance(obj, (tuple, list)):
        return [x for v in obj for x in _leaves(v)]
    return [obj]


def batch_size(sample: Any) -> int | None:
    sizes = {t.shape[0] for t in _leaves(sample) if isinstance(t, Tensor) and t.dim() > 0}
    return sizes.pop() if len(sizes) == 1 else None


def _signature(sample: Any) -> Any:
    if isinstance(sample, dict):
        return ("dict", tuple((k, _signature(sample[k])) for k in sorted(sample)))
    if isinstance(sample, (tuple, list)):
        return (type(sample).__name__, tuple(_signature(v) for v in sample))
    if isinstance(sample, Tensor):
        return ("tensor", tuple(sample.shape[1:]) if sample.dim() else (), sample.dtype, sample.dim() == 0)
    return ("value", repr(sample))


def _merge(parts: Sequence[Any], sizes: Sequence[int]) -> Any:
    first = parts[0]
    if isinstance(first, dict):
        return {k: _merge([p[k] for p in parts], sizes) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_merge([p[i] for p in parts], sizes) for i in range(len(first)))
    if isinstance(first, Tensor):
        return torch.cat([p.reshape(1).expand(n) if p.dim() == 0 else p for p, n in zip(parts, sizes, strict=True)])
    return first


def merge_samples(samples: Sequence[Any], max_batch: int = 16) -> list[Any]:
    """Consecutive compatible samples merged up to `max_batch` rows; incompatible ones stay as they are."""
    out: list[Any] = []
    group: list[Any] = []
    rows = 0

    def flush() -> None:
        nonlocal group, rows
        if group:
            out.append(group[0] if len(group) == 1 else _merge(group, [batch_size(g) for g in group]))
        group, rows = [], 0

    for s in samples:
        n = batch_size(s)
        if n is None:
            flush()
            out.append(s)
            continue
        if group and (_signature(s) != _signature(group[0]) or rows + n > max_batch):
            flush()
        group.append(s)
        rows += n
    flush()
    return out


def rows_of(samples: Sequence[Any]) -> int:
    """Batch rows in `samples` (a sample without one batch dimension counts as one row)."""
    return sum(batch_size(s) or 1 for s in samples)


def first_rows(samples: Sequence[Any], rows: int) -> list[Any]:
    """The first samples that together hold at least `rows` batch rows (at least one sample); all when `rows` is 0."""
    if rows <= 0:
        return list(samples)
    out: list[Any] = []
    for s in samples:
        if out and rows_of(out) >= rows:
            break
        out.append(s)
    return out
