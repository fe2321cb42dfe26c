"""The option registry. Core code looks options up by name here and imports no concrete option.

An option says how a unit is stored (its `Storage`, which fixes the byte accounting) and, once the quantization
code is registered, how a unit is quantized. Options register with `@register_option("name")` on a zero-argument
factory that returns the option object.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from anna.errors import AnnaError
from anna.units import Storage, unit_bytes

if TYPE_CHECKING:
    from torch import nn

FP16 = "fp16"
SEED_BAG = ("fp16", "fp8-absmax", "fp8-conservative", "fp8-moderate", "fp8-aggressive")
# The seed's bag plus FP8 attention projections with the attention math in FP16 (anna.options.attention_fp16math).
# Measured with `anna run` on tiny-sdxl (budgets 0.521-0.60), the seed's bag plus fp8-absmax-fp16math and its
# -fp16k/-fp16v/-fp16o/-fp16kv variants: the search picks FP16 math on 12-22 of 34 attention units, and FP16
# projections on at most 6; the measured MSE drops at 6 of 9 budgets (by up to 29%) and rises by 3-11% at 3 (the
# search's pick: the seed's plan still fits). The four variants cost 4 more trials per attention unit and give the
# search's polish same-size siblings to measure (analysis and search took about 1.8x as long), so only FP16 math joins
# the default (+5% analysis trials on tiny-sdxl, +9% on SDXL); the per-projection options are there for `--bag`.
DEFAULT_BAG = (*SEED_BAG, "fp8-absmax-fp16math")
# The default of a component with attention units and no convolution (a transformer: MiniLM, the text encoders). On
# MiniLM (bench/peers.py: calibration rows 1-200, held-out rows 4001-4500) the default bag's plans had up to 1.34x the
# embedding MSE of ModelOpt auto_quantize's at equal bytes; with this bag at most 0.996x. Keeping one or two
# projections FP16 buys small budget steps; the clipped variants only lose there (outlier channels), so they are out.
TRANSFORMER_BAG = ("fp16", "fp8-absmax", "fp8-absmax-fp16math", *(f"fp8-absmax-fp16math-fp16{r}" for r in
                                                                  ("k", "v", "o", "kv", "vo", "kvo")))
# The default of a component with attention units and convolutions (a UNet, a VAE decoder): DEFAULT_BAG (DESIGN's
# four FP8 options: convolutions may prefer clipping, and the solver decides per unit) plus six projection subsets.
# Measured with bench/peers.py (linear model; held-out MSE of anna's plan over ModelOpt auto_quantize's at equal bytes,
# worst over S..S+0.10; tiny-sdxl: COCO rows 1-200 / 4001-4500, tiny-t2i: its captions 1-100 / 101-200): DEFAULT_BAG
# 1.053 on tiny-sdxl's UNet, 1.134 on tiny-t2i's, 1.039 on tiny-t2i's VAE decoder, the peer winning at the top
# budgets by keeping single projections (o, qo, vo, qvo) in FP16. With fp16, fp8-absmax, FP16 math and all 14
# projection subsets: 1.018, 1.010, 0.990 (probes: anna.analyze.stage.default_probes). Those searches (on calibration
# inputs) picked only the six subsets below; the solver's time grows with the options (tiny-t2i's UNet: solve 2 s
# with DEFAULT_BAG, 21 s with 17 options), so the other eight join only with --bag. This bag, measured on a quiet
# machine (peer biases rounded to FP16): worst 1.006, 1.008, 0.990 at 1.25x, 1.25x, 1.83x the peer's time (the
# linear model prunes the clippings early where they lose: 2.30x, 1.80x, 2.09x without that).
UNET_BAG = (*DEFAULT_BAG, *(f"fp8-absmax-fp16math-fp16{r}" for r in ("v", "o", "qo", "ko", "vo", "qvo")))
_BUILTIN_MODULES = ("anna.options.fp8", "anna.options.qdq", "anna.options.attention_fp16math")


@runtime_checkable
class Option(Protocol):
    """What the registry holds. `storage` is None for `fp16`."""

    name: str
    storage: Storage | None
    config: Any


@runtime_checkable
class QuantOption(Option, Protocol):
    """An option that quantizes units (every registered option but `fp16`).

    `quantize(module, kind, stats, where)` turns a unit and its calibration statistics (ActStats per activation name
    of `ACTIVATIONS[kind]`) into the quantized unit's stored tensors; `wrap(module, kind, state, where)` builds the
    quantized unit from the original module and those tensors (on apply, and again on loading a checkpoint);
    `activation_range(stats)` is the [lo, hi] range it quantizes one activation to.
    """

    def activation_range(self, stats: Any) -> tuple[float, float]: ...

    def quantize(self, module: Any, kind: str, stats: Any, where: str = "unit") -> dict[str, Any]: ...

    def wrap(self, module: Any, kind: str, state: Any, where: str = "unit") -> Any: ...


def quant_option(name: str) -> QuantOption:
    """The registered option `name`, which must quantize (not `fp16`)."""
    opt = get_option(name)
    if opt.storage is None or not isinstance(opt, QuantOption):
        raise AnnaError(f"option '{name}' does not quantize")
    return opt


@dataclass(frozen=True)
class FP16Option:
    name: str = FP16
    storage: Storage | None = None
    config: Any = None


_REGISTRY: dict[str, Callable[[], Option]] = {FP16: FP16Option}
_loaded = False


def register_option(name: str) -> Callable[[Callable[[], Option]], Callable[[], Option]]:
    """Register a zero-argument factory for the option `name`."""

    def deco(factory: Callable[[], Option]) -> Callable[[], Option]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"option '{name}' is registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
        _loaded = True


def option_names() -> list[str]:
    _load_builtin()
    return list(_REGISTRY)


def get_option(name: str) -> Option:
    """The option object for `name`, or a clear error listing the known names."""
    _load_builtin()
    if name not in _REGISTRY:
        raise AnnaError(f"unknown option '{name}'; known options: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]()


def canonical_option(name: str, kind: str) -> str:
    """The option that `name` equals on a unit of `kind` (the same stored tensors and bytes): the option's
    `canonical(kind)` where it has one (an attention-only variant is its base option elsewhere), else `name`."""
    opt = get_option(name)
    canonical = getattr(opt, "canonical", None)
    return canonical(kind) if callable(canonical) else name


def same_trials(kinds: list[str], options: list[str]) -> dict[tuple[int, int], int]:
    """`(i, j) -> j0` for every option j that quantizes unit i (of kind `kinds[i]`) exactly as an earlier option j0
    of the bag does (the same canonical option): analysis copies such a trial instead of running it."""
    out: dict[tuple[int, int], int] = {}
    for i, kind in enumerate(kinds):
        first: dict[str, int] = {}
        for j, name in enumerate(options):
            c = canonical_option(name, kind)
            if c in first:
                out[(i, j)] = first[c]
            else:
                first[c] = j
    return out


def default_bag(kinds: Iterable[str]) -> tuple[str, ...]:
    """The bag used without `--bag` for a component whose units have these kinds: with attention units,
    UNET_BAG when it has convolutions and TRANSFORMER_BAG when not; without, DEFAULT_BAG."""
    kinds = set(kinds)
    if "attention" not in kinds:
        return DEFAULT_BAG
    return UNET_BAG if "conv" in kinds else TRANSFORMER_BAG


def parse_bag(spec: str | None, default: Sequence[str] = DEFAULT_BAG) -> list[str]:
    """`--bag` value (comma separated) to a validated list that always starts with fp16; `default` without one."""
    names = list(default) if not spec else [s.strip() for s in spec.split(",") if s.strip()]
    for n in names:
        get_option(n)
    return [FP16] + [n for n in names if n != FP16]


def option_bytes(module: nn.Module, kind: str, option: str) -> int:
    """Real bytes of one unit under the registered option `option`: the option's own `unit_bytes(module, kind)`
    where it has one (options whose bytes depend on which of the unit's weights they quantize), else `unit_bytes`
    with the option's `Storage`."""
    opt = get_option(option)
    own = getattr(opt, "unit_bytes", None)
    return own(module, kind) if callable(own) else unit_bytes(module, kind, opt.storage)
