"""Quantize and dequantize as plain tensor functions: FP8 E4M3, asymmetric unsigned integers, FP8 matmul.

Module wrappers hold state and call these; nothing here touches an ``nn.Module``.

Conventions:
- Scales are fp32. A per-channel scale has shape ``(C,)`` and is broadcast along ``axis`` of the tensor;
  ``axis=None`` means one scale (and zero point) for the whole tensor.
- FP8 is symmetric: ``q = sat(x / scale)`` in ``torch.float8_e4m3fn``, ``x ~ q * scale``.
- Unsigned integers are asymmetric like ONNX ``QuantizeLinear``: ``q = clamp(round_half_even(x / scale) + zp, 0, qmax)``
  and ``x ~ (q - zp) * scale``. Parameters follow ONNX Runtime's MinMax ``compute_scale_zp`` exactly, so the
  simulation here is bit-exact with ORT's QDQ graphs.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
"""Largest finite ``float8_e4m3fn`` value."""

SCALE_FLOOR = torch.finfo(torch.float32).tiny
"""Smallest scale an FP8 scale function returns: an all-zero channel then quantizes and dequantizes to exact zeros."""

SCALED_MM_MULTIPLE = 16
"""``torch._scaled_mm`` on CUDA needs K and N divisible by this; ``fp8_linear`` zero-pads there (exact)."""


def _broadcast(scale: torch.Tensor, x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """Reshape a scale or zero point so it broadcasts against ``x``: a scalar (axis None) or ``(C,)`` along axis."""
    scale = torch.as_tensor(scale, device=x.device)
    if axis is None:
        if scale.numel() != 1:
            raise ValueError(f"axis=None needs one scale, got shape {tuple(scale.shape)}")
        return scale.reshape(())
    axis = axis % x.dim()
    if scale.numel() != x.shape[axis]:
        raise ValueError(f"scale of {scale.numel()} values for axis {axis} of a tensor shaped {tuple(x.shape)}")
    shape = [1] * x.dim()
    shape[axis] = -1
    return scale.reshape(shape)


# FP8 E4M3


def fp8_weight_scale(w: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """Symmetric per-output-channel FP8 scale: absmax over every dim except ``axis``, / 448; fp32, shape ``(C,)``."""
    axis = axis % w.dim()
    dims = [d for d in range(w.dim()) if d != axis]
    amax = w.detach().abs().float().amax(dim=dims) if dims else w.detach().abs().float()
    return (amax / FP8_MAX).clamp_min(SCALE_FLOOR)


def fp8_scale_from_range(lo: float | torch.Tensor, hi: float | torch.Tensor) -> torch.Tensor:
    """Symmetric per-tensor FP8 scale from a calibrated range: ``max(|lo|, |hi|) / 448``, an fp32 scalar."""
    lo_t = torch.as_tensor(lo, dtype=torch.float32).reshape(())
    hi_t = torch.as_tensor(hi, dtype=torch.float32).reshape(())
    amax = torch.maximum(lo_t.abs(), hi_t.abs())
    return (amax / FP8_MAX).clamp_min(SCALE_FLOOR)


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """``x / scale`` saturated to ±448, cast (round to nearest even) to ``float8_e4m3fn``: overflow never gives NaN."""
    scaled = x.float() / _broadcast(scale, x, axis).float()
    return scaled.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def dequantize_fp8(
    q: torch.Tensor, scale: torch.Tensor, axis: int | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``q * scale`` computed in fp32, returned in ``dtype``."""
    return (q.float() * _broadcast(scale, q, axis).float()).to(dtype)


def fp8_codes_to_float(q: torch.Tensor) -> torch.Tensor:
    """``q.float()`` for E4M3 codes that hold no NaN, four times faster on CPU: the code's bits, shifted into an FP16
    (sign; exponent and mantissa 7 places up), read the FP8 value over 2^8, normals and subnormals alike."""
    if q.device.type != "cpu":
        return q.float()
    b = q.view(torch.uint8).to(torch.int16)
    return (((b & 0x7F) << 7) | ((b & 0x80) << 8)).view(torch.float16).float() * 256.0


def fake_quant_fp8(x: torch.Tensor, scale: torch.Tensor, axis: int | None = None) -> torch.Tensor:
    """FP8 quantize then dequantize, in ``x``'s dtype (saturated codes hold no NaN)."""
    s = _broadcast(scale, x, axis).float()
    return (fp8_codes_to_float(quantize_fp8(x, scale, axis)) * s).to(x.dtype)


# Asymmetric unsigned integers (ONNX Runtime QDQ, MinMax)


def _check_bits(bits: int) -> int:
    """Validate a bit width and return ``qmax = 2**bits - 1``."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    return (1 << bits) - 1


def uint_storage_dtype(bits: int) -> torch.dtype:
    """Container of a ``bits``-wide code: ``torch.uint8`` up to 8 bits, ``torch.uint16`` up to 16."""
    _check_bits(bits)
    return torch.uint8 if bits <= 8 else torch.uint16


def uint_qparams(lo: float | torch.Tensor, hi: float | torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Asymmetric ``(scale fp32, zero_point int32)`` for the range [lo, hi], scalar or per channel.

    Matches ``onnxruntime.quantization.quant_utils.compute_scale_zp`` (asymmetric, no reduce_range, qmin=0):
    the range is widened to include 0; ``scale = (hi - lo) / qmax`` and ``zp = round_half_even(-lo / scale)`` are
    computed in float64 from fp32 bounds, then the scale is cast to fp32. A range whose scale is below the fp32
    ``tiny`` (such as an all-zero tensor) gets ``scale = 1, zp = 0``, as in ORT.
    """
    qmax = _check_bits(bits)
    lo_t = torch.as_tensor(lo).to(torch.float32)
    hi_t = torch.as_tensor(hi).to(torch.float32)
    lo64 = lo_t.clamp_max(0.0).double()
    hi64 = hi_t.clamp_min(0.0).double()
    scale64 = (hi64 - lo64) / qmax
    degenerate = scale64 < torch.finfo(torch.float32).tiny
    safe = torch.where(degenerate, torch.ones_like(scale64), scale64)
    zp = torch.round(-lo64 / safe).clamp(0, qmax)
    zp = torch.where(degenerate, torch.zeros_like(zp), zp).to(torch.int32)
    scale = torch.where(degenerate, torch.ones_like(scale64), scale64).to(torch.float32)
    return scale, zp


def quantize_uint(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int, bits: int, axis: int | None = None
) -> torch.Tensor:
    """``clamp(round_half_even(x / scale) + zp, 0, 2**bits - 1)`` like ONNX QuantizeLinear.

    Division is in fp32. Returns ``torch.uint8`` for up to 8 bits and ``torch.uint16`` for up to 16 (torch 2.13
    casts to and from uint16; do arithmetic after ``.to(torch.int32)``).
    """
    qmax = _check_bits(bits)
    s = _broadcast(scale, x, axis).float()
    zp = _broadcast(torch.as_tensor(zero_point), x, axis).float()
    q = torch.round(x.float() / s) + zp
    return q.clamp(0, qmax).to(uint_storage_dtype(bits))


def dequantize_uint(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | int,
    axis: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``float32(int32(q) - zp) * scale`` like ONNX DequantizeLinear, returned in ``dtype``."""
    zp = _broadcast(torch.as_tensor(zero_point), q, axis).to(torch.int32)
    s = _broadcast(scale, q, axis).float()
    return ((q.to(torch.int32) - zp).float() * s).to(dtype)


def fake_quant_uint(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | int, bits: int, axis: int | None = None
) -> torch.Tensor:
    """Unsigned-integer quantize then dequantize, in ``x``'s dtype."""
    q = quantize_uint(x, scale, zero_point, bits, axis)
    return dequantize_uint(q, scale, zero_point, axis, dtype=x.dtype)


# Real FP8 matmul


def _pad_last(t: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last dim of a 2D tensor to ``size`` (through fp32: float8 padding is not implemented)."""
    if t.shape[-1] == size:
        return t
    return F.pad(t.float(), (0, size - t.shape[-1])).to(t.dtype)


def _round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is at least ``n``."""
    return -(-n // multiple) * multiple


def fp8_linear(
    x: torch.Tensor,
    w_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    pad_multiple: int | None = None,
) -> torch.Tensor:
    """``x @ dequant(w_q).T + bias`` on the FP8 tensor cores: x is quantized per tensor, then ``torch._scaled_mm``.

    ``w_q`` is ``(out, in)`` float8 with per-output-channel ``w_scale`` ``(out,)``; ``x_scale`` is a scalar.
    Row-wise scaling applies both scales inside the kernel: ``scale_a = x_scale`` repeated to ``(M, 1)``,
    ``scale_b = w_scale`` as ``(1, N)`` (torch accepts tensor-wise scalars or this row-wise pair, not a mix).
    The bias is added after the matmul in ``out_dtype`` (CUDA's fp32-output path takes no fused bias).
    K and N are zero-padded to a multiple of ``pad_multiple`` (default 16 off CPU, which CUDA requires; none on CPU,
    which has no constraint): zero columns add nothing, so padding is exact. Equals
    ``F.linear(fake_quant_fp8(x, x_scale), dequantize_fp8(w_q, w_scale, axis=0), bias)`` up to accumulation order.
    On CUDA, which output dtypes row-wise scaling accepts depends on the torch/cuBLAS build: probe with
    ``scaled_mm_available(device, out_dtype)``.
    """
    out_dtype = out_dtype or x.dtype
    n, k = w_q.shape
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features, weight expects {k}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if pad_multiple is None:
        pad_multiple = 1 if x.device.type == "cpu" else SCALED_MM_MULTIPLE
    kp, np_ = _round_up(k, pad_multiple), _round_up(n, pad_multiple)
    x_q = _pad_last(quantize_fp8(x2, x_scale), kp).contiguous()
    w_p = w_q.to(FP8_DTYPE)
    if kp != k or np_ != n:
        w_p = F.pad(w_p.float(), (0, kp - k, 0, np_ - n)).to(FP8_DTYPE)
    w_p = w_p.contiguous()
    w_s = w_scale.float().reshape(1, n)
    if np_ != n:
        w_s = F.pad(w_s, (0, np_ - n), value=1.0)
    scale_a = torch.as_tensor(x_scale, device=x.device).float().reshape(1, 1).expand(m, 1).contiguous()
    out = torch._scaled_mm(x_q, w_p.t(), scale_a=scale_a, scale_b=w_s.contiguous(), out_dtype=out_dtype)
    if np_ != n:
        out = out[:, :n]
    if bias is not None:
        out = out + bias.to(out_dtype)
    return out.reshape(*lead, n)


@functools.cache
def _probe_scaled_mm(device: str, out_dtype: torch.dtype) -> bool:
    """Run one small row-wise ``fp8_linear`` on ``device``; True if it works."""
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return False
    try:
        x = torch.ones(16, 32, device=device)
        w_q = torch.ones(16, 32, device=device).to(FP8_DTYPE)
        out = fp8_linear(x, w_q, torch.tensor(1.0, device=device), torch.ones(16, device=device), out_dtype=out_dtype)
        return bool(torch.allclose(out.float().cpu(), torch.full((16, 16), 32.0)))
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return False


def scaled_mm_available(device: torch.device | str, out_dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``fp8_linear`` (row-wise ``torch._scaled_mm``) runs on ``device`` with this output dtype (cached)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None and torch.cuda.is_available():
        dev = torch.device("cuda", torch.cuda.current_device())
    return _probe_scaled_mm(str(dev), out_dtype)


# Metrics


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - test)^2)`` in dB; inf when identical."""
    r = ref.detach().double()
    noise = (r - test.detach().double()).pow(2).sum().item()
    signal = r.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
