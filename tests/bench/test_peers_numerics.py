"""bench/peers.py's ModelOpt config quantizes exactly the Linears and Conv2ds (not LayerNorm inputs), as anna's
fp8-absmax does; bench/peers_numerics.py maps anna plans back onto the peer's layers."""

from __future__ import annotations

import random

import pytest
import torch
from peers import FP8_PER_CHANNEL
from peers_models import anna_assignment
from peers_numerics import fp8_layers
from torch import nn

from anna.options.quant import fake_quant_fp8, fp8_scale_from_range
from anna.options.schemes import FP8Scheme


def test_peer_config_quantizes_linears_and_convs_only_and_agrees_with_anna():
    mtq = pytest.importorskip("modelopt.torch.quantization")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(2), nn.LayerNorm(36), nn.Linear(36, 5))
    data = [torch.randn(4, 3, 8, 8) for _ in range(3)]
    with torch.no_grad():
        inputs = [model[2](model[1](model[0](x))) for x in data]  # the Linear's inputs, unquantized
    mtq.quantize(model, FP8_PER_CHANNEL, forward_loop=lambda m: [m(x) for x in data])
    enabled = {n for n, m in model.named_modules() if type(m).__name__ == "TensorQuantizer" and m.is_enabled}
    assert enabled == {"0.weight_quantizer", "0.input_quantizer", "3.weight_quantizer", "3.input_quantizer"}
    # the Linear's FP8: same input range (max |x| over the calibration) and same codes as anna's fp8-absmax maths
    lin = model[3]
    amax = max(float(x.abs().max()) for x in inputs)
    assert float(lin.input_quantizer.amax) == pytest.approx(amax, rel=1e-6)
    scheme = FP8Scheme()
    parts = scheme.quantize_weight(lin.weight)
    w = scheme.dequantize_weight({"": parts[""], "_scale": parts["_scale"]}, torch.float32)
    x = inputs[0]
    anna = nn.functional.linear(fake_quant_fp8(x, fp8_scale_from_range(-amax, amax)), w, lin.bias)
    with torch.no_grad():
        peer = lin(x)
    assert torch.allclose(anna, peer, rtol=0, atol=1e-5 * float(peer.abs().max()))


def test_anna_plans_map_back_onto_the_peer_layers(tiny):
    unet = tiny.component("unet")
    layers = [n for n, m in unet.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    rng = random.Random(0)
    for _ in range(3):
        fp8 = {n for n in layers if rng.random() < 0.6}
        assert fp8_layers(unet, anna_assignment(unet, fp8)) == fp8
    assert fp8_layers(unet, {}) == set()
