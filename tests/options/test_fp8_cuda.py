"""The real FP8 matmul on a GPU (skipped without CUDA): torch._scaled_mm against the simulated path."""

import pytest
import torch
import torch.nn.functional as F

from anna.options.quant import (
    dequantize_fp8,
    fake_quant_fp8,
    fp8_linear,
    fp8_scale_from_range,
    fp8_weight_scale,
    quantize_fp8,
    scaled_mm_available,
    sqnr_db,
)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("k, n", [(64, 32), (640, 1280), (50, 23)])
def test_scaled_mm_on_cuda_matches_simulation(k, n):
    out_dtype = torch.bfloat16
    if not scaled_mm_available("cuda", out_dtype):
        pytest.fail("torch._scaled_mm is not available on this GPU for bf16 output")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, k, generator=g).cuda()
    w = torch.randn(n, k, generator=g).cuda() / k**0.5
    w_scale = fp8_weight_scale(w)
    w_q = quantize_fp8(w, w_scale, axis=0)
    x_scale = fp8_scale_from_range(-x.abs().max(), x.abs().max())
    real = fp8_linear(x, w_q, x_scale, w_scale, out_dtype=out_dtype).float()
    simulated = F.linear(fake_quant_fp8(x, x_scale), dequantize_fp8(w_q, w_scale, axis=0))
    # fp32 accumulation in a different order, then one bf16 rounding of the output: 2^-8 relative
    assert torch.allclose(real, simulated, rtol=2**-7, atol=1e-3 * simulated.abs().max().item())
    assert sqnr_db(F.linear(x, w), real) > 25.0  # FP8 on both operands: ~29-30 dB measured on CPU
