"""`qdq-u8u16`: the ONNX Runtime QDQ scheme. uint8 weights, uint16 activations, asymmetric MinMax ranges."""

from __future__ import annotations

from dataclasses import dataclass

from anna.options.registry import Storage, register_option

# 1 byte per weight; per output channel an fp32 scale and a uint8 zero point; per activation an fp32 scale and a
# uint16 zero point.
QDQ_STORAGE = Storage(weight_bytes=1, channel_bytes=4 + 1, activation_bytes=4 + 2)


@dataclass(frozen=True)
class QDQConfig:
    weight_bits: int = 8
    activation_bits: int = 16


@dataclass(frozen=True)
class QDQOption:
    name: str
    config: QDQConfig
    storage: Storage = QDQ_STORAGE


@register_option("qdq-u8u16")
def _u8u16() -> QDQOption:
    return QDQOption("qdq-u8u16", QDQConfig())
