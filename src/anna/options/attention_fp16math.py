"""FP8 attention units whose attention math stays in FP16, with a choice of which q/k/v/out linears stay FP16.

`fp8-<clipping>-fp16math` quantizes an attention unit's q, k, v and out projections like FP8 linear units (weights
per output channel from the absmax, each projection's input per tensor from its calibrated range: the unit's "input"
for q, "context" for k and v, "out_in" for out) and leaves the attention math (Q, K, V, softmax probabilities)
unquantized: the unit runs its own attention implementation, untouched. Any other Linear of the unit stays FP16.
`fp8-absmax-fp16math-fp16<roles>` also keeps the projections named by `<roles>` (letters among q, k, v, o) in FP16,
e.g. `fp8-absmax-fp16math-fp16kv`. On a Linear or Conv2d unit (no attention math, no projections) each option is
exactly its base FP8 option (`fp8-absmax` ...): same stored tensors, same bytes (`canonical` says so, so analysis
need not run the trial twice).

Why per-linear choices are options of the attention unit rather than sub-units (one unit per projection plus one for
the math):
- the plan format and the unit names stay as they are: one entry per attention unit, and the option name says which
  projections stay FP16; a reader (and an old plan) sees the same units;
- the solver is unchanged: one option per unit, each with its exact bytes, so the DP sees steps of one projection's
  bytes instead of four;
- each option's error is measured with the unit's quantized projections together, so the interaction inside a unit
  is exact rather than left to the sketched cross terms;
- calibration is unchanged (the same per-unit statistics).
The price is a fixed menu (the registered subsets) and one analysis trial per option on every attention unit.

Stored tensors of a quantized projection `P` (as for a Linear unit): `P.weight` (float8), `P.weight_scale` (fp32 per
output channel), `P.input_scale` (fp32 scalar), `P.bias` (FP16); every other tensor of the unit, including the kept
projections, in FP16. Bytes: `1 * weights + 4 * output channels + 4` per quantized projection, 2 per other parameter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from anna.attention import projection_paths
from anna.errors import AnnaError
from anna.options.base import QuantizingOption
from anna.options.fp8 import FP8_STORAGE, percentile_range
from anna.options.registry import Storage, register_option
from anna.options.schemes import FP8Scheme, Scheme
from anna.options.wrappers import (
    OPTION_ATTR,
    QuantLinear,
    _replace,
    _sub,
    activation_state,
    check_plain_tensors,
    unit_option,
    weight_state,
)
from anna.stats import ActStats
from anna.units import ACTIVATIONS, unit_bytes

ROLES = ("q", "k", "v", "o")
# The unit activation (see ACTIVATIONS["attention"]) that each projection reads.
ROLE_INPUT = {"q": "input", "k": "context", "v": "context", "o": "out_in"}


@dataclass(frozen=True)
class FP16MathConfig:
    """`percentile`: range of the projections' inputs (None: min-max, else the (p, 100-p) percentiles);
    `fp16_linears`: the projections (among q, k, v, o) kept in FP16."""

    percentile: float | None
    fp16_linears: tuple[str, ...] = ()


def quantized_roles(fp16_linears: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(r for r in ROLES if r not in fp16_linears)


def attention_projections(module: nn.Module, where: str) -> dict[str, str]:
    """role -> unit-relative path of the q/k/v/out projections (any other Linear of the unit stays FP16)."""
    try:
        paths = projection_paths(module)
    except TypeError as e:
        raise AnnaError(f"{where}: {e}") from None
    for role, path in paths.items():
        if not isinstance(module.get_submodule(path), nn.Linear):
            raise AnnaError(f"{where}: projection {role} ({path}) is not a Linear")
    return paths


def attention_linears_bytes(module: nn.Module, storage: Storage, fp16_linears: tuple[str, ...]) -> int:
    """Real bytes of an attention unit whose projections outside `fp16_linears` are quantized with their inputs."""
    paths = attention_projections(module, type(module).__name__)
    total = 2 * sum(p.numel() for p in module.parameters())
    for role in quantized_roles(fp16_linears):
        w = module.get_submodule(paths[role]).weight
        total += (storage.weight_bytes - 2) * w.numel() + storage.channel_bytes * w.shape[0] + storage.activation_bytes
    return total


def attention_linears_state(
    scheme: Scheme, module: nn.Module, fp16_linears: tuple[str, ...], ranges: Mapping[str, tuple[float, float]],
    where: str,
) -> dict[str, Tensor]:
    """Stored tensors: quantized projections (weight codes, scales, input parameters, FP16 bias), the rest FP16."""
    paths = attention_projections(module, where)
    state: dict[str, Tensor] = {}
    inside = []
    for role in quantized_roles(fp16_linears):
        path = paths[role]
        lin = module.get_submodule(path)
        state |= weight_state(scheme, f"{path}.weight", lin.weight)
        state |= activation_state(scheme, f"{path}.input", *ranges[ROLE_INPUT[role]])
        if lin.bias is not None:
            state[f"{path}.bias"] = lin.bias.detach().to(torch.float16)
        inside.append(f"{path}.")
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if not name.startswith(tuple(inside)):
            state[name] = t.detach().to(torch.float16) if t.is_floating_point() else t.detach().clone()
    return state


def wrap_attention_linears(
    scheme: Scheme, option: str, module: nn.Module, fp16_linears: tuple[str, ...], state: Mapping[str, Tensor],
    where: str,
) -> nn.Module:
    """Quantize ``module`` in place from its stored tensors (validated first): the quantized projections become
    ``QuantLinear`` units that quantize their own input; every other tensor takes its stored FP16 value; the attention
    math is left as it is (no tap)."""
    if unit_option(module) is not None:
        raise AnnaError(f"{where} is already quantized ({unit_option(module)})")
    paths = attention_projections(module, where)
    device = next((t.device for t in list(module.parameters()) + list(module.buffers())), torch.device("cpu"))
    state = {k: v.to(device) for k, v in state.items()}
    wrapped: list[tuple[str, nn.Module]] = []
    known: set[str] = set()
    for role in quantized_roles(fp16_linears):
        path = paths[role]
        sub_state = _sub(state, f"{path}.")
        known |= {f"{path}.{k}" for k in sub_state}
        wrapped.append((path, QuantLinear(scheme, module.get_submodule(path), sub_state, where=f"{where}.{path}")))
    inside = tuple(f"{p}." for p, _ in wrapped)
    others = [(n, t) for n, t in list(module.named_parameters()) + list(module.named_buffers())
              if not n.startswith(inside)]
    known |= {n for n, _ in others}
    check_plain_tensors(state, known, others, where)
    with torch.no_grad():
        for name, t in others:
            t.copy_(state[name])
    for path, new in wrapped:
        _replace(module, path, new)
    setattr(module, OPTION_ATTR, option)
    return module


@dataclass(frozen=True)
class FP16MathOption(QuantizingOption):
    """FP8 q/k/v/out projections (less `fp16_linears`), attention math unquantized; `base` on Linear/Conv2d units."""

    name: str
    config: FP16MathConfig
    base: str
    storage: Storage = FP8_STORAGE
    scheme: FP8Scheme = field(default_factory=FP8Scheme)

    def activation_range(self, stats: ActStats) -> tuple[float, float]:
        return percentile_range(self.name, self.config.percentile, stats)

    def canonical(self, kind: str) -> str:
        """The option this one equals on a unit of `kind`: its base FP8 option outside attention."""
        return self.name if kind == "attention" else self.base

    def ranges(self, kind: str, stats: Mapping[str, ActStats], where: str = "unit") -> dict[str, tuple[float, float]]:
        if kind != "attention":
            return super().ranges(kind, stats, where)
        needed = {ROLE_INPUT[r] for r in quantized_roles(self.config.fp16_linears)}
        names = [a for a in ACTIVATIONS["attention"] if a in needed]
        missing = [a for a in names if stats.get(a) is None]
        if missing:
            raise AnnaError(f"{where}: no calibration statistics for activation(s) {', '.join(missing)}")
        return {a: self.activation_range(stats[a]) for a in names}

    def quantize(self, module: nn.Module, kind: str, stats: Mapping[str, ActStats], where: str = "unit"
                 ) -> dict[str, Tensor]:
        if kind != "attention":
            return super().quantize(module, kind, stats, where)
        ranges = self.ranges(kind, stats, where)
        return attention_linears_state(self.scheme, module, self.config.fp16_linears, ranges, where)

    def wrap(self, module: nn.Module, kind: str, state: Mapping[str, Tensor], where: str = "unit") -> nn.Module:
        if kind != "attention":
            return super().wrap(module, kind, state, where)
        return wrap_attention_linears(self.scheme, self.name, module, self.config.fp16_linears, state, where)

    def unit_bytes(self, module: nn.Module, kind: str) -> int:
        """Real bytes of one unit under this option."""
        if kind != "attention":
            return unit_bytes(module, kind, self.storage)
        return attention_linears_bytes(module, self.storage, self.config.fp16_linears)


CLIPPINGS = {"absmax": None, "conservative": 1.0, "moderate": 5.0, "aggressive": 10.0}
# Projections kept in FP16 by the registered per-linear options (with min-max input ranges).
FP16_LINEAR_SUBSETS = ("q", "k", "v", "o", "kv", "qk", "qv", "qo", "ko", "vo", "qkv", "qko", "qvo", "kvo")


def fp16math_name(clipping: str, fp16_linears: str = "") -> str:
    """`fp8-<clipping>-fp16math`, plus `-fp16<roles>` when projections stay FP16 (roles in q, k, v, o order)."""
    return f"fp8-{clipping}-fp16math" + (f"-fp16{fp16_linears}" if fp16_linears else "")


def _register(clipping: str, fp16_linears: str = "") -> None:
    name = fp16math_name(clipping, fp16_linears)
    config = FP16MathConfig(CLIPPINGS[clipping], tuple(fp16_linears))
    register_option(name)(lambda: FP16MathOption(name, config, base=f"fp8-{clipping}"))


for _clip in CLIPPINGS:
    _register(_clip)
for _subset in FP16_LINEAR_SUBSETS:
    _register("absmax", _subset)
