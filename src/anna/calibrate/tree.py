"""Nested call arguments <-> (JSON skeleton, flat named tensors), so `(args, kwargs)` can live in safetensors.

A skeleton node is one of: `{"tensor": KEY}`, `{"value": JSON scalar}`, `{"list": [...]}`, `{"tuple": [...]}`,
`{"dict": {name: node}}`. Tensor keys are the path to the leaf joined by dots under a prefix, e.g.
`s3.kwargs.added_cond_kwargs.time_ids`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from anna.errors import AnnaError

_SCALARS = (bool, int, float, str, type(None))


def flatten(obj: Any, prefix: str) -> tuple[Any, dict[str, Tensor]]:
    """The skeleton of `obj` and its tensors (detached CPU clones) keyed under `prefix`."""
    tensors: dict[str, Tensor] = {}

    def walk(x: Any, path: str) -> Any:
        if isinstance(x, Tensor):
            tensors[path] = x.detach().to("cpu", copy=True).contiguous()
            return {"tensor": path}
        if isinstance(x, _SCALARS):
            return {"value": x}
        if isinstance(x, Mapping):
            bad = [k for k in x if not isinstance(k, str) or "." in k]
            if bad:
                raise AnnaError(f"cannot store argument '{path}': dict keys must be strings without dots, got {bad}")
            return {"dict": {k: walk(v, f"{path}.{k}") for k, v in x.items()}}
        if isinstance(x, (list, tuple)):
            kind = "tuple" if isinstance(x, tuple) else "list"
            return {kind: [walk(v, f"{path}.{i}") for i, v in enumerate(x)]}
        raise AnnaError(f"cannot store argument '{path}' of type {type(x).__name__} (tensors, scalars, dicts, lists)")

    return walk(obj, prefix), tensors


def unflatten(skeleton: Any, tensors: Mapping[str, Tensor]) -> Any:
    """Rebuild the object that `flatten` described."""
    if not isinstance(skeleton, dict) or len(skeleton) != 1:
        raise AnnaError(f"bad cached-input skeleton node: {skeleton!r}")
    ((kind, body),) = skeleton.items()
    if kind == "tensor":
        if body not in tensors:
            raise AnnaError(f"cached inputs miss tensor '{body}'")
        return tensors[body]
    if kind == "value":
        return body
    if kind == "dict":
        return {k: unflatten(v, tensors) for k, v in body.items()}
    if kind == "list":
        return [unflatten(v, tensors) for v in body]
    if kind == "tuple":
        return tuple(unflatten(v, tensors) for v in body)
    raise AnnaError(f"unknown cached-input skeleton node kind '{kind}'")


def tensor_bytes(tensors: Mapping[str, Tensor]) -> int:
    """Total bytes of the tensors' data."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def to_device(obj: Any, device: torch.device) -> Any:
    """`obj` with every tensor moved to `device` (structure kept)."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    return obj
