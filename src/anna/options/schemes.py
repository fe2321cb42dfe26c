"""Number formats of the quantized options: how a weight and an activation become stored tensors, and back.

A scheme only maps tensors to tensors (through the pure functions of ``anna.options.quant``); the option decides the
activation range, and the wrappers in ``anna.options.wrappers`` hold the tensors. The stored tensors of a weight named
``w`` are ``w`` (the codes), ``w_scale`` (fp32 per output channel) and, for integer codes, ``w_zero_point``; those of
an activation ``a`` are ``a_scale`` (fp32 scalar) and, for integer codes, ``a_zero_point``. Their byte counts are the
option's ``Storage``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from anna.options.quant import (
    FP8_DTYPE,
    dequantize_fp8,
    dequantize_uint,
    fake_quant_fp8,
    fake_quant_uint,
    fp8_scale_from_range,
    fp8_weight_scale,
    quantize_fp8,
    quantize_uint,
    uint_qparams,
    uint_storage_dtype,
)

TensorSpec = tuple[torch.dtype, tuple[int, ...]]
"""The dtype and shape a stored tensor must have."""


class Scheme(Protocol):
    """A number format for the weights (per output channel, axis 0) and the activations (per tensor)."""

    name: str

    def quantize_weight(self, w: Tensor) -> dict[str, Tensor]:
        """Stored tensors of weight ``w``, keyed by suffix: "" (codes), "_scale", and "_zero_point" if any."""
        ...

    def weight_spec(self, shape: tuple[int, ...]) -> dict[str, TensorSpec]:
        """Suffix -> (dtype, shape) of the stored tensors of a weight of this shape."""
        ...

    def dequantize_weight(self, parts: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        """The weight the quantized unit computes with, from its stored tensors (keyed by suffix)."""
        ...

    def activation_qparams(self, lo: float, hi: float) -> dict[str, Tensor]:
        """Stored tensors of an activation with calibrated range [lo, hi], keyed "_scale" / "_zero_point"."""
        ...

    def activation_spec(self) -> dict[str, TensorSpec]:
        ...

    def fake_quant_activation(self, x: Tensor, qparams: Mapping[str, Tensor]) -> Tensor:
        """Quantize then dequantize ``x`` (in its dtype) with the activation's stored tensors."""
        ...


@dataclass(frozen=True)
class FP8Scheme:
    """FP8 E4M3, symmetric: weights per output channel from the absmax, activations one scale per tensor."""

    name: str = "fp8"

    def quantize_weight(self, w: Tensor) -> dict[str, Tensor]:
        scale = fp8_weight_scale(w, axis=0)
        return {"": quantize_fp8(w.detach(), scale, axis=0), "_scale": scale}

    def weight_spec(self, shape: tuple[int, ...]) -> dict[str, TensorSpec]:
        return {"": (FP8_DTYPE, tuple(shape)), "_scale": (torch.float32, (shape[0],))}

    def dequantize_weight(self, parts: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        return dequantize_fp8(parts[""], parts["_scale"], axis=0, dtype=dtype)

    def activation_qparams(self, lo: float, hi: float) -> dict[str, Tensor]:
        return {"_scale": fp8_scale_from_range(lo, hi)}

    def activation_spec(self) -> dict[str, TensorSpec]:
        return {"_scale": (torch.float32, ())}

    def fake_quant_activation(self, x: Tensor, qparams: Mapping[str, Tensor]) -> Tensor:
        return fake_quant_fp8(x, qparams["_scale"])


@dataclass(frozen=True)
class UIntScheme:
    """Asymmetric unsigned integers (ONNX Runtime QDQ, MinMax): weights per output channel, activations per tensor."""

    weight_bits: int = 8
    activation_bits: int = 16
    name: str = "uint"

    def quantize_weight(self, w: Tensor) -> dict[str, Tensor]:
        w = w.detach()
        flat = w.float().reshape(w.shape[0], -1)
        scale, zp = uint_qparams(flat.amin(dim=1), flat.amax(dim=1), self.weight_bits)
        codes = quantize_uint(w, scale, zp, self.weight_bits, axis=0)
        return {"": codes, "_scale": scale, "_zero_point": zp.to(uint_storage_dtype(self.weight_bits))}

    def weight_spec(self, shape: tuple[int, ...]) -> dict[str, TensorSpec]:
        dt = uint_storage_dtype(self.weight_bits)
        return {"": (dt, tuple(shape)), "_scale": (torch.float32, (shape[0],)), "_zero_point": (dt, (shape[0],))}

    def dequantize_weight(self, parts: Mapping[str, Tensor], dtype: torch.dtype) -> Tensor:
        return dequantize_uint(parts[""], parts["_scale"], parts["_zero_point"].to(torch.int32), axis=0, dtype=dtype)

    def activation_qparams(self, lo: float, hi: float) -> dict[str, Tensor]:
        scale, zp = uint_qparams(lo, hi, self.activation_bits)
        return {"_scale": scale.reshape(()), "_zero_point": zp.reshape(()).to(uint_storage_dtype(self.activation_bits))}

    def activation_spec(self) -> dict[str, TensorSpec]:
        return {"_scale": (torch.float32, ()), "_zero_point": (uint_storage_dtype(self.activation_bits), ())}

    def fake_quant_activation(self, x: Tensor, qparams: Mapping[str, Tensor]) -> Tensor:
        zp = qparams["_zero_point"].to(torch.int32)
        return fake_quant_uint(x, qparams["_scale"], zp, self.activation_bits)
