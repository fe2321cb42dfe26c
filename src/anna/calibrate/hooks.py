"""Hooks that feed the observers, in a context manager that always removes them.

- Conv/Linear units: the input is observed on the way in.
- diffusers attention units with a standard processor (`AttnProcessor2_0`, `AttnProcessor`): the unit runs its own
  (fused) attention as usual, so the model's output and trajectory are exactly those of plain generation. Its
  projections observe what they see: "input" (to_q's input), "context" (to_k's input), "out_in" (to_out[0]'s input)
  and the q, k, v projections' outputs (per-tensor statistics do not depend on the head layout; `norm_q` and
  `norm_k` are applied as the processor does). Only the softmax probabilities "p" do not exist in the fused run:
  after the unit's call they are computed from the captured q and k exactly as the tapped explicit math
  (`anna.attention.tapped_attention`) does (same scale, mask and query chunks, bit for bit), without the
  projections, the PV product or the output projection.
- Other attention units (transformers CLIP/BERT, unknown processors): a forward hook re-runs the unit with an
  observing tap (`anna.attention.set_tap`) on the same arguments, discarding that output, to see input, context,
  out_in, q, k, v and p.

The hot paths (every conv, linear and projection call) are instance-level `forward` wrappers rather than torch
hooks: the same observation at about half the per-call cost, since a module with hooks leaves torch's fast call
path. Wrappers chain onto any `forward` already set on the instance and are undone on exit.

Either way the statistics, the cached inputs and the component outputs are those of the unmodified pipeline.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anna.attention import MAX_SCORE_ELEMENTS, Tap, attention_scale, set_tap, split_heads
from anna.calibrate.observers import UnitObservers
from anna.units import ACTIVATIONS

# diffusers processors whose math is the tapped processor's (TappedAttnProcessor) up to the fused attention call
_STANDARD_PROCESSORS = ("AttnProcessor2_0", "AttnProcessor")


class _Wrapper:
    """An instance-level `forward` override: `make(forward)` gives the new forward; `remove()` restores the old."""

    def __init__(self, module: nn.Module, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        self.module = module
        self.previous = module.__dict__.get("forward")  # an instance-level forward set by someone else, if any
        module.forward = make(module.forward)

    def remove(self) -> None:
        if self.previous is None:
            del self.module.forward
        else:
            self.module.forward = self.previous


def _first_arg(args: tuple, kwargs: dict[str, Any]) -> Any:
    return args[0] if args else next(iter(kwargs.values()))


def _observe_input(module: nn.Module, collect: Callable[[Tensor], None]) -> _Wrapper:
    def make(forward: Callable[..., Any]) -> Callable[..., Any]:
        def observed(*args: Any, **kwargs: Any) -> Any:
            collect(_first_arg(args, kwargs))
            return forward(*args, **kwargs)

        return observed

    return _Wrapper(module, make)


def _observe_call(module: nn.Module, after: Callable[[tuple, dict[str, Any], Any], None]) -> _Wrapper:
    """Call `after(args, kwargs, output)` after each call of `module`."""

    def make(forward: Callable[..., Any]) -> Callable[..., Any]:
        def observed(*args: Any, **kwargs: Any) -> Any:
            output = forward(*args, **kwargs)
            after(args, kwargs, output)
            return output

        return observed

    return _Wrapper(module, make)


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


def _observes_by_projections(module: nn.Module) -> bool:
    """Whether `module` is a diffusers attention whose processor the projection observers reproduce."""
    if not (hasattr(module, "set_processor") and hasattr(module, "to_q") and hasattr(module, "to_out")):
        return False
    if getattr(module, "add_k_proj", None) is not None or getattr(module, "add_v_proj", None) is not None:
        return False
    return type(getattr(module, "processor", None)).__name__ in _STANDARD_PROCESSORS


def attention_probabilities(
    query: Tensor, key: Tensor, scale: float, mask: Tensor | None, collect: Callable[[Tensor], None]
) -> None:
    """Collect softmax(q k^T * scale + mask) on (batch, heads, seq, dim) tensors, in the query chunks and with the
    exact ops of `anna.attention.tapped_attention` (so the probabilities are bit for bit the tapped math's)."""
    b, h, n_q, _ = query.shape
    rows = max(1, MAX_SCORE_ELEMENTS // max(1, b * h * key.shape[-2]))
    kt = key.transpose(-1, -2)
    for start in range(0, n_q, rows):
        scores = torch.matmul(query if rows >= n_q else query[:, :, start : start + rows], kt) * scale
        if mask is not None:
            m = mask if mask.shape[-2] == 1 else mask[..., start : start + rows, :]
            scores = scores + m
        p = F.softmax(scores, dim=-1, dtype=torch.float32)
        collect(p if p.dtype == query.dtype else p.to(query.dtype))


def _call_arg(args: tuple, kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _projection_observers(module: nn.Module, observers: UnitObservers, unit: str) -> list[_Wrapper]:
    """Wrappers observing a standard diffusers attention unit through its projections (see the module docstring)."""
    # The standard processors never change the projections' outputs, or to_out's input, in place, and p is computed
    # here for observation only: those are staged without a copy. The unit's input and context are the caller's.
    owned = ("q", "k", "v", "out_in", "p")
    col = {act: observers.collector(unit, act, owned=act in owned) for act in ACTIVATIONS["attention"]}
    held: dict[str, Tensor] = {}
    last_context: list[weakref.ref | None] = [None]
    same_context = [False]

    def on_query(args: tuple, kwargs: dict[str, Any], output: Tensor) -> None:
        col["input"](_first_arg(args, kwargs))
        held["q"] = output

    def on_key(args: tuple, kwargs: dict[str, Any], output: Tensor) -> None:
        # the same context tensor as in the previous call (text embeddings across denoising steps): context, k and
        # v likely repeat; the collectors check that exactly before counting a staged copy again
        x = _first_arg(args, kwargs)
        same_context[0] = last_context[0] is not None and last_context[0]() is x
        last_context[0] = weakref.ref(x)
        col["context"](x, same_context[0])
        held["k"] = output

    def on_value(args: tuple, kwargs: dict[str, Any], output: Tensor) -> None:
        held["v"] = output

    def on_unit(args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        query, key, value = held.pop("q"), held.pop("k"), held.pop("v")
        attn = module
        hidden = _call_arg(args, kwargs, 0, "hidden_states")
        context = _call_arg(args, kwargs, 1, "encoder_hidden_states")
        mask = _call_arg(args, kwargs, 2, "attention_mask")
        batch_size = query.shape[0]
        q, k, _, head_dim = split_heads(attn, query, key)
        if mask is not None:
            src = hidden if context is None else context
            sequence_length = src.shape[2] * src.shape[3] if src.ndim == 4 else src.shape[1]
            mask = attn.prepare_attention_mask(mask, sequence_length, batch_size)
            mask = mask.view(batch_size, attn.heads, -1, mask.shape[-1])
        col["q"](query if attn.norm_q is None else q)
        col["k"](key if attn.norm_k is None else k, same_context[0])
        col["v"](value, same_context[0])
        attention_probabilities(q, k, attention_scale(attn, head_dim), mask, col["p"])

    return [
        _observe_call(module.to_q, on_query),
        _observe_call(module.to_k, on_key),
        _observe_call(module.to_v, on_value),
        _observe_input(module.to_out[0], col["out_in"]),
        _observe_call(module, on_unit),
    ]


@contextmanager
def observe(
    units: Sequence[tuple[str, str, nn.Module]], observers: UnitObservers, rerun_attention: bool = False
) -> Iterator[None]:
    """Install the observers on `units` ((name, kind, module) triples) for the duration of the block.

    `rerun_attention` forces the tapped re-run for every attention unit (the reference the projection observers match).
    """
    installed: list[Any] = []  # wrappers and torch hook handles: both have remove()
    try:
        for name, kind, module in units:
            if kind == "attention":
                if not rerun_attention and _observes_by_projections(module):
                    installed.extend(_projection_observers(module, observers, name))
                else:
                    hook = _attention_hook(module, observing_tap(observers, name))
                    installed.append(module.register_forward_hook(hook, with_kwargs=True))
            else:
                installed.append(_observe_input(module, observers.collector(name, "input")))
        yield
    finally:
        for item in reversed(installed):  # last in, first out: stacked wrappers unwind in order
            item.remove()
