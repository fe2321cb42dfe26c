"""apply(): errors before any change, the printed summary, ranges per option, wrappers' dtype discipline, and the
real FP8 matmul path against the simulated one."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from anna.calibrate.histogram import StreamingHistogram
from anna.errors import AnnaError
from anna.options import get_option
from anna.options.apply import apply
from anna.options.quant import FP8_DTYPE, scaled_mm_available, sqnr_db
from anna.options.wrappers import QuantLinear, set_fp8_matmul, unit_option
from anna.stats import ActStats


def _act_stats(x: torch.Tensor) -> ActStats:
    h = StreamingHistogram()
    h.collect(x)
    return h.compute()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(32, 64)
        self.b = nn.Linear(64, 16)
        self.c = nn.Conv2d(4, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _stats(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "a": {"input": _act_stats(torch.randn(256, 32, generator=g))},
        "b": {"input": _act_stats(torch.relu(torch.randn(256, 64, generator=g)))},
        "c": {"input": _act_stats(torch.randn(2, 4, 8, 8, generator=g))},
    }


def _same(m1: nn.Module, m2: nn.Module) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)


def test_unknown_unit_is_an_error_and_changes_nothing() -> None:
    net = Net()
    before = copy.deepcopy(net)
    with pytest.raises(AnnaError, match=r"'a\.x'.*closest: a"):
        apply(net, {"a": "fp8-moderate", "a.x": "fp8-moderate"}, _stats(), echo=None)
    assert _same(net, before) and unit_option(net.a) is None


def test_unknown_option_is_an_error() -> None:
    net = Net()
    with pytest.raises(AnnaError, match="unknown option 'fp8-bogus'.*fp8-moderate"):
        apply(net, {"a": "fp8-bogus"}, _stats(), echo=None)
    assert isinstance(net.a, nn.Linear)


def test_missing_stats_name_the_unit() -> None:
    net = Net()
    stats = _stats()
    del stats["b"]
    with pytest.raises(AnnaError, match="unit 'b'.*fp8-absmax"):
        apply(net, {"a": "fp8-absmax", "b": "fp8-absmax"}, stats, echo=None)
    assert isinstance(net.a, nn.Linear), "a failing apply must not have quantized the units before the failure"
    stats = _stats()
    stats["c"] = {}
    with pytest.raises(AnnaError, match="c: no calibration statistics for activation.*input"):
        apply(net, {"c": "qdq-u8u16"}, stats, echo=None)
    # fp16 units need no statistics
    apply(net, {"a": "fp16", "c": "fp16"}, {}, echo=None)


def test_apply_twice_is_an_error() -> None:
    net = Net()
    apply(net, {"a": "fp8-moderate"}, _stats(), echo=None)
    with pytest.raises(AnnaError, match="'a' is already quantized"):
        apply(net, {"a": "fp8-moderate"}, _stats(), echo=None)


def test_summary_is_printed_with_bytes_and_ranges() -> None:
    net = Net()
    lines: list[str] = []
    summary = apply(net, {"a": "fp8-moderate", "b": "qdq-u8u16", "c": "fp16"}, _stats(), echo=lines.append)
    table = "\n".join(lines)
    assert "fp8-moderate" in table and "qdq-u8u16" in table and "range used" in table
    rows = {r.unit: r for r in summary.rows}
    # a: 64x32 weight at 1 byte + 64 fp32 scales + 64 fp16 biases + 1 fp32 activation scale
    assert rows["a"].bytes_after == 64 * 32 + 64 * 4 + 64 * 2 + 4
    # b: 16x64 uint8 + 16 (fp32 scale + uint8 zero point) + 16 fp16 biases + (fp32 scale + uint16 zero point)
    assert rows["b"].bytes_after == 16 * 64 + 16 * 5 + 16 * 2 + 6
    assert rows["c"].bytes_after == rows["c"].bytes_before == 2 * (8 * 4 * 9 + 8)
    assert summary.quantized == ["a", "b"]
    assert f"{rows['a'].bytes_after:,}" in table


def test_activation_range_per_option() -> None:
    stats = _act_stats(torch.randn(100_000, generator=torch.Generator().manual_seed(3)) * 2 + 0.5)
    p = stats.percentiles
    assert get_option("fp8-absmax").activation_range(stats) == (stats.min, stats.max)
    assert get_option("fp8-conservative").activation_range(stats) == (p["1"], p["99"])
    assert get_option("fp8-moderate").activation_range(stats) == (p["5"], p["95"])
    assert get_option("fp8-aggressive").activation_range(stats) == (p["10"], p["90"])
    assert get_option("qdq-u8u16").activation_range(stats) == (stats.min, stats.max)
    net = Net()
    summary = apply(net, {"a": "fp8-moderate"}, {"a": {"input": stats}}, echo=None)
    assert summary.rows[0].ranges == {"input": (p["5"], p["95"])}
    lo, hi = p["5"], p["95"]
    assert net.a.input_scale.item() == pytest.approx(max(abs(lo), abs(hi)) / 448, rel=1e-6)


def test_stored_dtypes_and_half_keeps_them() -> None:
    net = Net()
    apply(net, {"a": "fp8-absmax", "b": "qdq-u8u16"}, _stats(), echo=None)
    a, b = net.a, net.b
    assert a.weight.dtype == FP8_DTYPE and a.weight_scale.dtype == torch.float32 and a.bias.dtype == torch.float16
    assert a.input_scale.shape == () and a.input_scale.dtype == torch.float32
    assert b.weight.dtype == torch.uint8 and b.weight_zero_point.dtype == torch.uint8
    assert b.input_zero_point.dtype == torch.uint16 and b.input_scale.dtype == torch.float32
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    out32 = net(x)
    net.half()
    for k, v in net.state_dict().items():
        if k.startswith(("a.", "b.")):
            assert v.dtype == saved[k].dtype and torch.equal(v, saved[k]), k
    net.float()
    assert torch.equal(net(x), out32)


def test_quantized_outputs_close_to_fp32() -> None:
    net = Net()
    ref = copy.deepcopy(net)
    apply(net, {"a": "fp8-absmax", "b": "qdq-u8u16"}, _stats(), echo=None)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(5))
    # measured 29.3 dB: one FP8 linear (about 29 dB alone) then a qdq one (48 dB)
    assert sqnr_db(ref(x), net(x)) > 27.5


@pytest.mark.skipif(not scaled_mm_available("cpu"), reason="torch._scaled_mm not available on CPU")
def test_fp8_matmul_matches_simulation() -> None:
    """The real FP8 matmul (torch._scaled_mm through quant.fp8_linear) against the simulated path, on CPU.

    Both compute sum(q_x * q_w) * s_x * s_w on the same FP8 codes; only where the scales are applied and the
    accumulation order can differ, so they agree to fp32 rounding. Measured on this CPU (torch 2.13): identical
    (max difference 0.0); on CUDA the kernel accumulates in its own order, hence the tolerance.
    """
    net = Net()
    apply(net, {"a": "fp8-absmax", "b": "fp8-moderate", "c": "qdq-u8u16"}, _stats(), echo=None)
    x = torch.randn(3, 7, 32, generator=torch.Generator().manual_seed(2))
    sim = net(x)
    assert set_fp8_matmul(net) == 2  # the qdq conv is not an FP8 linear
    assert net.a.fp8_matmul and net.b.fp8_matmul
    real = net(x)
    assert real.shape == sim.shape
    torch.testing.assert_close(real, sim, rtol=1e-5, atol=1e-5 * sim.abs().max().item())
    set_fp8_matmul(net, False)
    assert torch.equal(net(x), sim)


def test_fp8_matmul_unavailable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import anna.options.wrappers as w

    net = Net()
    apply(net, {"a": "fp8-absmax"}, _stats(), echo=None)
    monkeypatch.setattr(w, "scaled_mm_available", lambda device, dtype=torch.float32: False)
    with pytest.raises(AnnaError, match="not available"):
        set_fp8_matmul(net)
    assert isinstance(net.a, QuantLinear) and not net.a.fp8_matmul
