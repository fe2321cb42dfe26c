"""Any `torch.nn.Module`, from the Python API: the module, an iterable of input batches and a forward function."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from anna.adapters.base import Model


def _default_forward(module: nn.Module, batch: Any) -> torch.Tensor:
    if isinstance(batch, dict):
        out = module(**batch)
    elif isinstance(batch, (tuple, list)):
        out = module(*batch)
    else:
        out = module(batch)
    return out if isinstance(out, torch.Tensor) else out[0]


def from_module(
    module: nn.Module,
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    name: str | None = None,
) -> Model:
    """Wrap a module. `forward(module, batch)` returns the output tensor whose error anna minimises; by default the
    batch is passed as kwargs (dict), args (tuple/list) or a single argument, and the first output is taken."""
    return Model(
        name=name or type(module).__name__,
        components={"model": module.eval()},
        batches=list(batches),
        forward=forward or _default_forward,
    )
