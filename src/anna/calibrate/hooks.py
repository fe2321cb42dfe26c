"""Hooks that feed the observers, in a context manager that always removes them.

- Conv/Linear units: a forward pre-hook observes the input.
- Attention units: the unit runs its own (fused) attention as usual, so the model's output and trajectory are
  exactly those of plain generation; a forward hook then re-runs the unit with an observing tap
  (`anna.attention.set_tap`) on the same arguments, discarding that output, to see input, context, out_in, q, k, v
  and p. The price is that re-run (projections and explicit attention) on every attention call; in exchange the
  statistics, the cached inputs and the component outputs are those of the unmodified pipeline, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from anna.attention import Tap, set_tap
from anna.calibrate.observers import UnitObservers
from anna.inventory import ACTIVATIONS


def _input_hook(collect: Callable[[Tensor], None]) -> Callable[..., None]:
    def hook(module: nn.Module, args: tuple) -> None:
        collect(args[0])

    return hook


def observing_tap(observers: UnitObservers, unit: str) -> Tap:
    """A tap that collects every attention activation of `unit` and returns it unchanged.

    "context" is collected once per forward even where an implementation taps it once per projection (k and v).
    """
    collectors = {act: observers.collector(unit, act) for act in ACTIVATIONS["attention"]}
    last_context: list[Tensor | None] = [None]

    def tap(name: str, x: Tensor) -> Tensor:
        if name == "input":
            last_context[0] = None
        elif name == "context":
            if x is last_context[0]:
                return x
            last_context[0] = x
        collectors[name](x)
        return x

    return tap


def _attention_hook(module: nn.Module, tap: Tap) -> Callable[..., None]:
    """A forward hook that re-runs `module` with `tap` installed on the call's arguments, discarding the result."""
    plain = getattr(module, "processor", None)
    set_tap(module, tap)
    tapped = getattr(module, "processor", None)
    set_tap(module, None)
    if tapped is not plain and callable(tapped):  # diffusers: call the tapped processor directly

        def rerun(args: tuple, kwargs: dict[str, Any]) -> None:
            tapped(module, *args, **kwargs)

    else:  # transformers: the tap lives in hooks and the attention function; install it around the call

        def rerun(args: tuple, kwargs: dict[str, Any]) -> None:
            set_tap(module, tap)
            try:
                module.forward(*args, **kwargs)
            finally:
                set_tap(module, None)

    def hook(mod: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        rerun(args, kwargs)

    return hook


@contextmanager
def observe(units: Sequence[tuple[str, str, nn.Module]], observers: UnitObservers) -> Iterator[None]:
    """Install the observing hooks on `units` ((name, kind, module) triples) for the duration of the block."""
    handles: list[RemovableHandle] = []
    try:
        for name, kind, module in units:
            if kind == "attention":
                hook = _attention_hook(module, observing_tap(observers, name))
                handles.append(module.register_forward_hook(hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_pre_hook(_input_hook(observers.collector(name, "input"))))
        yield
    finally:
        for handle in handles:
            handle.remove()
