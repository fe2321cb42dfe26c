"""FP8 E4M3 static PTQ: weights per output channel (absmax), activations per tensor from a calibrated range."""

from __future__ import annotations

from dataclasses import dataclass, field

from anna.errors import AnnaError
from anna.options.base import QuantizingOption
from anna.options.registry import register_option
from anna.options.schemes import FP8Scheme
from anna.stats import ActStats
from anna.units import Storage

# 1 byte per weight; one fp32 scale per output channel; one fp32 scale per activation tensor.
FP8_STORAGE = Storage(weight_bytes=1, channel_bytes=4, activation_bytes=4)


@dataclass(frozen=True)
class FP8Config:
    """Activation range: full min-max when `percentile` is None, else the (p, 100-p) percentiles."""

    percentile: float | None


@dataclass(frozen=True)
class FP8Option(QuantizingOption):
    """Symmetric FP8: weight scale per channel ``absmax / 448``; activation scale ``max(|lo|, |hi|) / 448``."""

    name: str
    config: FP8Config
    storage: Storage = FP8_STORAGE
    scheme: FP8Scheme = field(default_factory=FP8Scheme)

    def activation_range(self, stats: ActStats) -> tuple[float, float]:
        return percentile_range(self.name, self.config.percentile, stats)


def percentile_range(option: str, percentile: float | None, stats: ActStats) -> tuple[float, float]:
    """The full min-max range (``percentile`` None) or the (p, 100-p) percentiles of an activation's statistics."""
    p = percentile
    if p is None:
        return float(stats.min), float(stats.max)
    lo_key, hi_key = f"{p:g}", f"{100 - p:g}"
    if lo_key not in stats.percentiles or hi_key not in stats.percentiles:
        raise AnnaError(f"{option} needs the {lo_key}th and {hi_key}th percentiles; the statistics hold "
                        f"{sorted(stats.percentiles, key=float)}")
    return float(stats.percentiles[lo_key]), float(stats.percentiles[hi_key])


@register_option("fp8-absmax")
def _absmax() -> FP8Option:
    return FP8Option("fp8-absmax", FP8Config(None))


@register_option("fp8-conservative")
def _conservative() -> FP8Option:
    return FP8Option("fp8-conservative", FP8Config(1.0))


@register_option("fp8-moderate")
def _moderate() -> FP8Option:
    return FP8Option("fp8-moderate", FP8Config(5.0))


@register_option("fp8-aggressive")
def _aggressive() -> FP8Option:
    return FP8Option("fp8-aggressive", FP8Config(10.0))
