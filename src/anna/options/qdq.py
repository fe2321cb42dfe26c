"""`qdq-u8u16`: the ONNX Runtime QDQ scheme. uint8 weights, uint16 activations, asymmetric MinMax ranges."""

from __future__ import annotations

from dataclasses import dataclass, field

from anna.options.base import QuantizingOption
from anna.options.registry import register_option
from anna.options.schemes import UIntScheme
from anna.stats import ActStats
from anna.units import Storage

# 1 byte per weight; per output channel an fp32 scale and a uint8 zero point; per activation an fp32 scale and a
# uint16 zero point.
QDQ_STORAGE = Storage(weight_bytes=1, channel_bytes=4 + 1, activation_bytes=4 + 2)


@dataclass(frozen=True)
class QDQConfig:
    weight_bits: int = 8
    activation_bits: int = 16


@dataclass(frozen=True)
class QDQOption(QuantizingOption):
    """Asymmetric MinMax: weights per output channel, activations per tensor over the full calibrated range."""

    name: str
    config: QDQConfig
    storage: Storage = QDQ_STORAGE
    scheme: UIntScheme = field(default_factory=UIntScheme)

    def __post_init__(self) -> None:
        want = UIntScheme(self.config.weight_bits, self.config.activation_bits)
        if self.scheme != want:
            object.__setattr__(self, "scheme", want)

    def activation_range(self, stats: ActStats) -> tuple[float, float]:
        return float(stats.min), float(stats.max)


@register_option("qdq-u8u16")
def _u8u16() -> QDQOption:
    return QDQOption("qdq-u8u16", QDQConfig())
