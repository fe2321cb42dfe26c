"""Capture a component's inputs and outputs during a pipeline run, then replay the inputs on another version of it.

A forward pre-hook (with kwargs) and a forward hook record a bounded, seeded reservoir sample of the component's calls,
as CPU copies. `replay_mse` runs a (quantized) component on exactly those inputs and compares its outputs with the
recorded ones. Captures are saved as safetensors (the tensors) plus a JSON tree (everything else), never pickled.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anna.adapters.base import component_output
from anna.artifacts import read_json, read_tensors, write_json, write_tensors
from anna.errors import AnnaError


@dataclass
class Call:
    """One recorded call: positional and keyword inputs, and the consumed output tensor."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: torch.Tensor | None = None


@dataclass
class Capture:
    """A reservoir sample of at most `max_calls` calls of one component, chosen with a seeded RNG."""

    component: str
    max_calls: int = 16
    seed: int = 0
    calls: list[Call] = field(default_factory=list)
    seen: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._slot: int | None = None

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        t = self.seen
        self.seen += 1
        self._slot = None
        if len(self.calls) < self.max_calls:
            self.calls.append(Call(_to_cpu(args), _to_cpu(kwargs)))
            self._slot = len(self.calls) - 1
        else:
            j = self._rng.randint(0, t)
            if j < self.max_calls:
                self.calls[j] = Call(_to_cpu(args), _to_cpu(kwargs))
                self._slot = j

    def _hook(self, module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        if self._slot is not None:
            self.calls[self._slot].output = component_output(self.component, out).detach().to("cpu", copy=True)
            self._slot = None


@contextlib.contextmanager
def capture_calls(module: nn.Module, component: str, max_calls: int = 16, seed: int = 0) -> Iterator[Capture]:
    """Record calls of `module` while the block runs; the hooks are always removed."""
    if max_calls < 1:
        raise AnnaError(f"max_calls must be at least 1, got {max_calls}")
    cap = Capture(component, max_calls, seed)
    handles = [
        module.register_forward_pre_hook(cap._pre_hook, with_kwargs=True),
        module.register_forward_hook(cap._hook),
    ]
    try:
        yield cap
    finally:
        for h in handles:
            h.remove()


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def replay_mse(module: nn.Module, capture: Capture) -> float:
    """Run `module` on the captured inputs; the MSE of its outputs against the recorded ones, pooled over every
    element of every call."""
    calls = [c for c in capture.calls if c.output is not None]
    if not calls:
        raise AnnaError(f"no captured calls of component '{capture.component}' to replay")
    device = _device_of(module)
    total, count = 0.0, 0
    with torch.inference_mode():
        for call in calls:
            out = module(*_to_device(call.args, device), **_to_device(call.kwargs, device))
            got = component_output(capture.component, out).detach().double().cpu()
            want = call.output.double()
            if got.shape != want.shape:
                raise AnnaError(
                    f"component '{capture.component}' output shape {tuple(got.shape)} differs from the original's "
                    f"{tuple(want.shape)}"
                )
            total += float(((got - want) ** 2).sum())
            count += want.numel()
    return total / count


# Saving and loading


class _Unserializable(Exception):
    pass


def _encode(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
        return {"tensor": prefix}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise _Unserializable(prefix)
        return {"dict": {k: _encode(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        kind = "tuple" if isinstance(obj, tuple) else "list"
        return {kind: [_encode(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return {"value": obj}
    raise _Unserializable(f"{prefix} ({type(obj).__name__})")


def _decode(node: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    if "tensor" in node:
        return tensors[node["tensor"]]
    if "dict" in node:
        return {k: _decode(v, tensors) for k, v in node["dict"].items()}
    if "tuple" in node:
        return tuple(_decode(v, tensors) for v in node["tuple"])
    if "list" in node:
        return [_decode(v, tensors) for v in node["list"]]
    return node["value"]


def save_capture(capture: Capture, folder: str | Path) -> bool:
    """Write `capture-<component>.json` and `.safetensors` into `folder`. False (nothing written) when an input
    is of a type that cannot be stored without pickling."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    try:
        tree = [
            {
                "args": _encode(c.args, f"call{i}.args", tensors),
                "kwargs": _encode(c.kwargs, f"call{i}.kwargs", tensors),
                "output": _encode(c.output, f"call{i}.output", tensors),
            }
            for i, c in enumerate(capture.calls)
        ]
    except _Unserializable:
        return False
    stem = f"capture-{capture.component}"
    write_tensors(folder / f"{stem}.safetensors", tensors)
    write_json(
        folder / f"{stem}.json",
        {"component": capture.component, "max_calls": capture.max_calls, "seed": capture.seed,
         "seen": capture.seen, "calls": tree},
    )
    return True


def load_capture(folder: str | Path, component: str) -> Capture | None:
    """The capture saved by `save_capture`, or None when there is none."""
    folder = Path(folder)
    stem = f"capture-{component}"
    if not (folder / f"{stem}.json").is_file() or not (folder / f"{stem}.safetensors").is_file():
        return None
    meta = read_json(folder / f"{stem}.json", "component capture")
    tensors = read_tensors(folder / f"{stem}.safetensors", "component capture")
    cap = Capture(component, int(meta["max_calls"]), int(meta["seed"]), seen=int(meta["seen"]))
    for node in meta["calls"]:
        cap.calls.append(Call(_decode(node["args"], tensors), _decode(node["kwargs"], tensors),
                              _decode(node["output"], tensors)))
    return cap
