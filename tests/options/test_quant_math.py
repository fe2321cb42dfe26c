"""Numbers for the plain quantization functions in ``anna.options.quant``: SQNR floors, exactness, ORT parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anna.options.quant import (
    FP8_MAX,
    dequantize_fp8,
    dequantize_uint,
    fake_quant_fp8,
    fake_quant_uint,
    fp8_linear,
    fp8_scale_from_range,
    fp8_weight_scale,
    quantize_fp8,
    quantize_uint,
    scaled_mm_available,
    sqnr_db,
    uint_qparams,
)

# Floors sit about 1 dB under the value measured with these seeds (stated beside each). The inputs are seeded and the
# arithmetic is deterministic, so the margin only absorbs platform differences in RNG-free math; a real regression
# (wrong rounding, scale off by a factor, lost channel axis) costs several dB or more.


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=_gen(seed))


def _student_t2(*shape: int, seed: int = 0) -> torch.Tensor:
    """Student-t with 2 degrees of freedom: z / sqrt(chi2_2 / 2), chi2_2 / 2 = -log U."""
    g = _gen(seed)
    z = torch.randn(*shape, generator=g)
    u = torch.rand(*shape, generator=g).clamp_min(1e-12)
    return z / torch.sqrt(-torch.log(u))


def _gaussian_outliers(*shape: int, seed: int = 0, rate: float = 1e-3) -> torch.Tensor:
    """N(0, 1) with a rare fraction of entries scaled by 100."""
    g = _gen(seed)
    x = torch.randn(*shape, generator=g)
    mask = torch.rand(*shape, generator=g) < rate
    return torch.where(mask, x * 100.0, x)


# FP8 SQNR floors


def test_fp8_weight_per_channel_sqnr_gaussian() -> None:
    w = _gaussian(256, 512, seed=0) * torch.logspace(-2, 1, 256).unsqueeze(1)  # channels over three decades
    s = fp8_weight_scale(w, axis=0)
    assert s.shape == (256,) and s.dtype == torch.float32
    got = sqnr_db(w, fake_quant_fp8(w, s, axis=0))
    assert got >= 30.5  # measured 31.66 dB


def test_fp8_weight_scale_conv_axis() -> None:
    w = _gaussian(8, 4, 3, 3, seed=1)
    s = fp8_weight_scale(w, axis=0)
    assert torch.equal(s, w.abs().amax(dim=(1, 2, 3)) / FP8_MAX)
    q = quantize_fp8(w, s, axis=0)
    assert q.dtype == torch.float8_e4m3fn
    assert q.float().abs().amax(dim=(1, 2, 3)).eq(FP8_MAX).all()  # each channel's absmax lands on 448


def test_fp8_activation_per_tensor_sqnr_gaussian() -> None:
    x = _gaussian(64, 512, seed=2)
    got = sqnr_db(x, fake_quant_fp8(x, fp8_scale_from_range(x.min(), x.max())))
    assert got >= 30.5  # measured 31.57 dB


def test_fp8_activation_per_tensor_sqnr_student_t() -> None:
    x = _student_t2(64, 512, seed=3)
    got = sqnr_db(x, fake_quant_fp8(x, fp8_scale_from_range(x.min(), x.max())))
    assert got >= 31.0  # measured 32.06 dB (absmax 307): floating point keeps relative precision across the tail


def test_fp8_activation_per_tensor_sqnr_outliers() -> None:
    x = _gaussian_outliers(64, 512, seed=4)
    got = sqnr_db(x, fake_quant_fp8(x, fp8_scale_from_range(x.min(), x.max())))
    assert got >= 30.5  # measured 31.73 dB


# Unsigned integer SQNR floors


def test_uint8_weight_per_channel_sqnr() -> None:
    w = _gaussian(256, 512, seed=5)
    scale, zp = uint_qparams(w.amin(dim=1), w.amax(dim=1), 8)
    assert scale.shape == (256,) and zp.shape == (256,)
    got = sqnr_db(w, fake_quant_uint(w, scale, zp, 8, axis=0))
    assert got >= 42.0  # measured 43.26 dB


def test_uint16_activation_sqnr() -> None:
    x = _gaussian(64, 512, seed=6)
    scale, zp = uint_qparams(x.min(), x.max(), 16)
    assert sqnr_db(x, fake_quant_uint(x, scale, zp, 16)) >= 88.0  # measured 89.09 dB
    y = _gaussian_outliers(64, 512, seed=7)
    scale, zp = uint_qparams(y.min(), y.max(), 16)
    assert sqnr_db(y, fake_quant_uint(y, scale, zp, 16)) >= 62.5  # measured 63.81 dB: the outliers stretch the grid


# Exactness


def test_fp8_grid_round_trip_exact() -> None:
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)]  # the two NaN codes are not values
    scale = torch.tensor(0.125)
    x = grid * scale
    q = quantize_fp8(x, scale)
    assert torch.equal(dequantize_fp8(q, scale), x)
    per_channel = torch.tensor([0.5, 2.0, 3.0])
    xc = grid[:100].reshape(1, 100) * per_channel.reshape(3, 1)
    assert torch.equal(fake_quant_fp8(xc, per_channel, axis=0), xc)


@pytest.mark.parametrize("bits", [8, 16])
def test_uint_grid_round_trip_exact(bits: int) -> None:
    scale, zp = uint_qparams(-1.3, 2.9, bits)
    codes = torch.arange(0, 2**bits, max(1, 2**bits // 1024), dtype=torch.int64)
    x = dequantize_uint(codes, scale, zp)
    q = quantize_uint(x, scale, zp, bits)
    assert q.dtype == (torch.uint8 if bits == 8 else torch.uint16)
    assert torch.equal(q.to(torch.int64), codes)
    assert torch.equal(dequantize_uint(q, scale, zp), x)


def test_fp8_saturates_without_nan() -> None:
    x = torch.tensor([1e6, -1e6, 1e30, -1e30, 3.0])
    scale = torch.tensor(1.0)
    q = quantize_fp8(x, scale)
    assert not torch.isnan(q.float()).any()
    assert q.float().tolist() == [FP8_MAX, -FP8_MAX, FP8_MAX, -FP8_MAX, 3.0]


def test_uint_saturates() -> None:
    scale, zp = uint_qparams(-1.0, 1.0, 8)
    q = quantize_uint(torch.tensor([1e6, -1e6, 0.0]), scale, zp, 8)
    assert q.tolist() == [255, 0, int(zp)]


@pytest.mark.parametrize("bits", [8, 16])
def test_uint_zero_is_exact(bits: int) -> None:
    lo = torch.tensor([-0.731, -5.0, 0.2, -3.3])  # one range entirely positive: widened to include 0
    hi = torch.tensor([1.917, 0.01, 4.0, -0.5])  # one entirely negative
    scale, zp = uint_qparams(lo, hi, bits)
    x = torch.zeros(4, 7)
    x[:, 1:] = torch.randn(4, 6, generator=_gen(8))
    out = fake_quant_uint(x, scale, zp, bits, axis=0)
    assert torch.equal(out[:, 0], torch.zeros(4))
    assert int(zp[2]) == 0 and int(zp[3]) == 2**bits - 1


def test_all_zero_tensor_and_channel() -> None:
    w = _gaussian(4, 16, seed=9)
    w[2] = 0.0
    s = fp8_weight_scale(w, axis=0)
    assert (s > 0).all() and torch.isfinite(s).all()
    out = fake_quant_fp8(w, s, axis=0)
    assert torch.equal(out[2], torch.zeros(16)) and not torch.isnan(out).any()
    z = torch.zeros(3, 5)
    assert torch.equal(fake_quant_fp8(z, fp8_scale_from_range(0.0, 0.0)), z)
    scale, zp = uint_qparams(z.amin(dim=1), z.amax(dim=1), 8)
    assert torch.equal(scale, torch.ones(3)) and torch.equal(zp, torch.zeros(3, dtype=torch.int32))  # as ORT
    assert torch.equal(fake_quant_uint(z, scale, zp, 8, axis=0), z)
    scale, zp = uint_qparams(w.amin(dim=1), w.amax(dim=1), 8)
    assert torch.equal(fake_quant_uint(w, scale, zp, 8, axis=0)[2], torch.zeros(16))


def test_uint_rounds_half_to_even() -> None:
    scale = torch.tensor(0.5)
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, -0.75])  # x / scale = 0.5, 1.5, 2.5, -0.5, -1.5
    assert quantize_uint(x, scale, 10, 8).tolist() == [10, 12, 12, 10, 8]


def test_sqnr_db() -> None:
    x = torch.tensor([3.0, 4.0])
    assert sqnr_db(x, x) == math.inf
    assert sqnr_db(x, x + torch.tensor([0.5, 0.0])) == pytest.approx(20.0)  # 25 / 0.25 = 100


# ONNX Runtime parity


def _ort_qdq(x: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Run QuantizeLinear -> DequantizeLinear (opset 21) on ORT's CPU provider; return (codes, dequantized)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    attrs = {} if axis is None else {"axis": axis}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], **attrs),
        helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], **attrs),
    ]
    qtype = helper.np_dtype_to_tensor_dtype(zp.dtype)
    graph = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [
            helper.make_tensor_value_info("q", qtype, list(x.shape)),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape)),
        ],
        initializer=[numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(zp, "zp")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    q, y = sess.run(["q", "y"], {"x": x})
    return q, y


def _ort_params(lo: np.ndarray, hi: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """ORT's own MinMax parameters, channel by channel."""
    quant_utils = pytest.importorskip("onnxruntime.quantization.quant_utils")
    from onnx import TensorProto

    qmin, qmax = quant_utils.get_qmin_qmax_for_qType(TensorProto.UINT8 if bits == 8 else TensorProto.UINT16)
    pairs = [quant_utils.compute_scale_zp(a, b, qmin, qmax) for a, b in zip(lo.ravel(), hi.ravel(), strict=True)]
    zps = np.array([p[0] for p in pairs]).reshape(lo.shape)
    scales = np.array([p[1] for p in pairs], dtype=np.float32).reshape(lo.shape)
    return scales, zps


def test_uint8_per_channel_matches_onnxruntime() -> None:
    w = _gaussian(32, 200, seed=10) * torch.logspace(-3, 1, 32).unsqueeze(1)
    w[3] = w[3].abs()  # a channel whose range excludes 0
    w[5] = 0.0
    lo, hi = w.amin(dim=1), w.amax(dim=1)
    scale, zp = uint_qparams(lo, hi, 8)
    ort_scale, ort_zp = _ort_params(lo.numpy(), hi.numpy(), 8)
    assert np.array_equal(scale.numpy(), ort_scale) and np.array_equal(zp.numpy(), ort_zp.astype(np.int32))
    x = w.clone()
    x[0, :4] = torch.tensor([1e4, -1e4, 0.0, -0.0])  # saturation inside the comparison
    q_ort, y_ort = _ort_qdq(x.numpy(), scale.numpy(), zp.numpy().astype(np.uint8), axis=0)
    q = quantize_uint(x, scale, zp, 8, axis=0)
    assert q.dtype == torch.uint8
    assert np.array_equal(q.numpy(), q_ort)
    assert np.array_equal(dequantize_uint(q, scale, zp, axis=0).numpy(), y_ort)
    assert np.array_equal(fake_quant_uint(x, scale, zp, 8, axis=0).numpy(), y_ort)


@pytest.mark.parametrize("make", [_gaussian, _student_t2, _gaussian_outliers])
def test_uint16_per_tensor_matches_onnxruntime(make) -> None:
    x = make(16, 300, seed=11) * 3.7 + 0.9
    lo, hi = x.min(), x.max()
    scale, zp = uint_qparams(lo, hi, 16)
    ort_scale, ort_zp = _ort_params(lo.numpy().reshape(1), hi.numpy().reshape(1), 16)
    assert scale.item() == ort_scale.item() and zp.item() == int(ort_zp.item())
    q_ort, y_ort = _ort_qdq(x.numpy(), scale.numpy(), zp.numpy().astype(np.uint16), axis=None)
    q = quantize_uint(x, scale, zp, 16)
    assert q.dtype == torch.uint16
    assert np.array_equal(q.numpy(), q_ort)
    assert np.array_equal(fake_quant_uint(x, scale, zp, 16).numpy(), y_ort)


def test_uint_half_way_matches_onnxruntime() -> None:
    x = torch.tensor([0.25, 0.75, 1.25, -0.25, -0.75, 2.5, 3.5])  # exact halves on a power-of-two grid
    q_ort, _ = _ort_qdq(x.numpy(), np.array(0.5, np.float32), np.array(10, np.uint8), axis=None)
    assert np.array_equal(quantize_uint(x, torch.tensor(0.5), 10, 8).numpy(), q_ort)


# Real FP8 matmul


def test_scaled_mm_available_on_cpu() -> None:
    assert scaled_mm_available("cpu")
    assert scaled_mm_available(torch.device("cpu"), torch.bfloat16)


@pytest.mark.parametrize(
    ("shape", "k", "n", "pad"),
    [((4, 8, 64), 64, 48, None), ((37, 50), 50, 23, None), ((2, 5, 50), 50, 23, 16)],
)
def test_fp8_linear_matches_simulation(shape: tuple[int, ...], k: int, n: int, pad: int | None) -> None:
    x = _gaussian(*shape, seed=12)
    w = _gaussian(n, k, seed=13) * torch.logspace(-1, 1, n).unsqueeze(1)
    bias = _gaussian(n, seed=14)
    w_scale = fp8_weight_scale(w)
    w_q = quantize_fp8(w, w_scale, axis=0)
    x_scale = fp8_scale_from_range(x.min(), x.max())
    got = fp8_linear(x, w_q, x_scale, w_scale, bias, pad_multiple=pad)
    ref = F.linear(fake_quant_fp8(x, x_scale), dequantize_fp8(w_q, w_scale, axis=0), bias)
    assert got.shape == (*shape[:-1], n) and got.dtype == torch.float32
    rel = ((got - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-6  # measured 0.0 unpadded, 2.9e-8 padded: fp32 accumulation order only
    # The quantized layer stays close to the float one: measured 29.0 to 30.2 dB.
    assert sqnr_db(F.linear(x, w, bias), got) >= 28.0


def test_fp8_linear_bf16_output() -> None:
    x = _gaussian(8, 32, seed=15)
    w = _gaussian(16, 32, seed=16)
    w_scale = fp8_weight_scale(w)
    w_q = quantize_fp8(w, w_scale, axis=0)
    x_scale = fp8_scale_from_range(x.min(), x.max())
    got = fp8_linear(x, w_q, x_scale, w_scale, out_dtype=torch.bfloat16)
    ref = F.linear(fake_quant_fp8(x, x_scale), dequantize_fp8(w_q, w_scale, axis=0))
    assert got.dtype == torch.bfloat16
    assert ((got.float() - ref).abs().max() / ref.abs().max()).item() <= 2**-8  # one bf16 rounding


def test_fp8_codes_to_float_is_the_cast_on_every_finite_code() -> None:
    from anna.options.quant import fp8_codes_to_float

    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    ref = codes.float()
    finite = ~ref.isnan()
    assert finite.sum() == 254  # 0x7F and 0xFF are E4M3's NaNs, which saturated quantization never produces
    got = fp8_codes_to_float(codes)
    assert torch.equal(got[finite], ref[finite]) and torch.equal(got.signbit()[finite], ref.signbit()[finite])
    x = torch.randn(4096) * 30
    scale = torch.tensor(0.05)
    assert torch.equal(fake_quant_fp8(x, scale), quantize_fp8(x, scale).float() * scale)
