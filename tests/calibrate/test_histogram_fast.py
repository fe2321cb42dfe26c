"""The CPU fast paths of StreamingHistogram (small finite chunks, window slides by slicing) give exactly the state of
the general, branch-free path."""

from __future__ import annotations

import pytest
import torch

from anna.calibrate.histogram import StreamingHistogram


def _reference_slide(hist: StreamingHistogram, counts, top, new_top):
    shift = (new_top - top) << hist.mantissa_bits
    dest = (torch.arange(hist._half) - shift).clamp_(min=0)
    return torch.zeros_like(counts).index_add_(1, dest, counts)


@pytest.mark.parametrize("mantissa_bits,window", [(7, 30), (3, 4), (0, 1)])
def test_slide_by_slicing_matches_index_add(mantissa_bits, window):
    hist = StreamingHistogram(mantissa_bits, window)
    counts = torch.randint(0, 1000, (2, hist._half), dtype=torch.int64)
    top = torch.tensor(120, dtype=torch.int32)
    for d in range(window + 3):
        new_top = top + d
        assert torch.equal(hist._slide(counts, top, new_top), _reference_slide(hist, counts, top, new_top)), d


def _batches(dtype):
    g = torch.Generator().manual_seed(0)
    out = [torch.randn(1000, generator=g) * 10.0**e for e in (-3, 0, 2, 5, 1, -8)]
    out += [torch.zeros(10), -torch.zeros(7), torch.randn(3, 5, generator=g), torch.tensor([1e-30, -1e-38, 3e4])]
    out += [
        torch.tensor([1.0, float("nan"), 2.0]),
        torch.tensor([float("inf"), -5.0]),
        torch.randn(70000, generator=g) * 1e3,
    ]
    return [x.to(dtype) for x in out]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("mantissa_bits,window", [(7, 30), (2, 3)])
def test_small_cpu_path_matches_general_path(monkeypatch, dtype, mantissa_bits, window):
    fast = StreamingHistogram(mantissa_bits, window)
    for x in _batches(dtype):
        fast.collect(x)
    monkeypatch.setattr(StreamingHistogram, "_collect_small_cpu", lambda self, chunk, weight=1: False)
    general = StreamingHistogram(mantissa_bits, window)
    for x in _batches(dtype):
        general.collect(x)
    a, b = fast.state_dict(), general.state_dict()
    for key in b:
        assert torch.equal(a[key], b[key]), key
    assert fast.nonfinite == general.nonfinite >= 2 and fast.compute() == general.compute()
