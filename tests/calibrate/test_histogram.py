"""StreamingHistogram: percentiles within one bin of torch.quantile, exact extremes, fixed memory."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from anna.calibrate import histogram as histogram_module
from anna.calibrate.hist_stack import stack_states, stats_from_state, unstack_states
from anna.calibrate.histogram import PERCENTILES, EmptyObserverError, NonFiniteActivation, StreamingHistogram
from anna.stats import ActStats

QS = torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.float64)
SEEDS = (0, 1, 2)


def _batches(kind: str, seed: int) -> list[torch.Tensor]:
    """Batches of various shapes for one distribution; concatenated, they are the reference data."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 16, 8, 8), (2, 77, 64), (5000,), (3, 1000)]
    out = []
    for k in range(16):
        shape = shapes[k % len(shapes)]
        if kind == "gaussian":
            x = torch.randn(shape, generator=g) * 0.7 + 0.3
        elif kind == "exponential":
            x = torch.empty(shape).exponential_(1.0, generator=g)
        elif kind == "lognormal":
            x = torch.empty(shape).log_normal_(0.0, 1.5, generator=g)
        elif kind == "heavy":  # bulk N(0, 1), 0.5 % outliers at 1000x the bulk (either sign)
            x = torch.randn(shape, generator=g)
            outlier = torch.rand(shape, generator=g) < 0.005
            x = torch.where(outlier, x.sign() * 1000.0 * (1 + torch.rand(shape, generator=g)), x)
        elif kind == "growing":  # batch k has scale 2^k
            x = torch.randn(shape, generator=g) * 2.0**k
        else:
            raise AssertionError(kind)
        out.append(x)
    return out


def _collect(batches: list[torch.Tensor], **kwargs: object) -> StreamingHistogram:
    h = StreamingHistogram(**kwargs)
    for x in batches:
        h.collect(x)
    return h


def _exact(batches: list[torch.Tensor]) -> tuple[torch.Tensor, list[float]]:
    data = torch.cat([x.reshape(-1) for x in batches]).double()
    return data, torch.quantile(data, QS).tolist()


def _assert_within_bin(h: StreamingHistogram, stats: ActStats, exact: list[float]) -> None:
    for p, want in zip(PERCENTILES, exact, strict=True):
        got = stats.percentiles[str(p)]
        width = h.bin_width_at(want)
        assert abs(got - want) <= width, f"p{p}: {got} vs exact {want}, bin width {width}"


def _assert_monotone(s: ActStats) -> None:
    chain = [s.min, *(s.percentiles[str(p)] for p in PERCENTILES), s.max]
    assert all(a <= b for a, b in zip(chain, chain[1:], strict=False)), chain


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["gaussian", "exponential", "lognormal", "heavy", "growing"])
def test_percentiles_within_one_bin_of_torch_quantile(kind: str, seed: int) -> None:
    batches = _batches(kind, seed)
    h = _collect(batches)
    s = h.compute()
    data, exact = _exact(batches)
    _assert_within_bin(h, s, exact)
    _assert_monotone(s)
    assert s.min == float(data.min()) and s.max == float(data.max())
    assert s.absmax == float(data.abs().max())
    assert s.count == data.numel() and s.nonfinite == 0
    # the relative bin width is at most 2^-7 of the value, at any magnitude
    for v in exact:
        assert h.bin_width_at(v) <= 2.0**-7 * abs(v)


def test_heavy_tail_bulk_resolution_floor() -> None:
    """Outliers at 1000x do not coarsen the bulk: p1..p99 of N(0,1) are resolved to < 1.6 % of its std."""
    batches = _batches("heavy", 0)
    h = _collect(batches)
    s = h.compute()
    _, exact = _exact(batches)
    bulk_std = 1.0
    # |p| < 4 for the bulk's percentiles, so the binade is at most [2, 4) and the width at most 2^(1-7) = 2^-6
    widths = [h.bin_width_at(v) for v in s.percentiles.values()]
    assert max(widths) <= 2.0**-6 * bulk_std
    errors = [abs(s.percentiles[str(p)] - e) for p, e in zip(PERCENTILES, exact, strict=True)]
    assert max(errors) <= 2.0**-6 * bulk_std
    # a fixed-range histogram with as many bins over [-absmax, absmax] (absmax ~ 2000) would be ~33x coarser here
    edges, _ = h.bin_edges()
    linear_width = 2 * s.absmax / (edges.numel() - 1)
    assert linear_width > 30 * max(widths)


def test_range_growing_past_the_window_pools_small_values_exactly() -> None:
    """Scales 2^0 .. 2^40 with a 30-binade window: early values pool into the underflow bin, still within one bin."""
    g = torch.Generator().manual_seed(3)
    batches = [torch.randn(4000, generator=g) * 2.0 ** (8 * k) for k in range(6)]
    h = _collect(batches)
    s = h.compute()
    _, exact = _exact(batches)
    _assert_within_bin(h, s, exact)
    _assert_monotone(s)
    # a narrow window forces the bulk percentiles into the underflow bin: its width is the tolerance
    narrow = _collect(batches, exponent_window=4)
    sn = narrow.compute()
    _assert_within_bin(narrow, sn, exact)
    assert narrow.bin_width_at(exact[2]) <= sn.absmax * 2.0**-3


def test_exact_zeros_constant_and_single_value() -> None:
    relu = torch.relu(torch.randn(20000, generator=torch.Generator().manual_seed(4)))
    h = _collect([relu])
    s = h.compute()
    _, exact = _exact([relu])
    _assert_within_bin(h, s, exact)
    assert s.min == 0.0 and s.percentiles["1"] == pytest.approx(0.0, abs=h.bin_width_at(0.0))
    const = _collect([torch.full((100,), -3.25)]).compute()
    assert const.min == const.max == -3.25 and all(v == -3.25 for v in const.percentiles.values())
    one = _collect([torch.tensor([7.0])]).compute()
    assert one.count == 1 and set(one.percentiles.values()) == {7.0}


def _state_equal(a: StreamingHistogram, b: StreamingHistogram) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", ["heavy", "growing"])
def test_merge_equals_collecting_all_at_once(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _batches(kind, 5)
    with monkeypatch.context() as patch:
        patch.setattr(histogram_module, "_SMALL", 0)  # one big tensor: the pattern-table path
        whole = _collect([torch.cat([x.reshape(-1) for x in batches])])
    sequential = _collect(batches)
    parts = [_collect(batches[i::3]) for i in range(3)]  # different windows per part
    merged = StreamingHistogram()
    for part in reversed(parts):
        merged.merge(part)
    assert _state_equal(whole, sequential)
    assert _state_equal(whole, merged)
    assert merged.compute() == whole.compute()


def test_state_dict_round_trip_through_safetensors(tmp_path) -> None:
    batches = _batches("growing", 6)
    h = _collect(batches[:10])
    h.collect(torch.tensor([math.nan, math.inf]))
    path = tmp_path / "obs.safetensors"
    save_file({f"unet.conv_in.{k}": v for k, v in h.state_dict().items()}, str(path))
    loaded = load_file(str(path))
    state = {k.removeprefix("unet.conv_in."): v for k, v in loaded.items()}
    back = StreamingHistogram.from_state_dict(state)
    assert back.compute() == h.compute()
    assert back.nonfinite == 2
    # resuming after the reload is the same as never stopping
    for x in batches[10:]:
        back.collect(x)
        h.collect(x)
    assert _state_equal(back, h)
    bad = dict(state, counts=state["counts"][:, :-1])
    with pytest.raises(ValueError, match="shape"):
        StreamingHistogram.from_state_dict(bad)


def test_memory_is_bounded() -> None:
    g = torch.Generator().manual_seed(7)
    one = StreamingHistogram()
    one.collect(torch.randn(64, generator=g))
    many = StreamingHistogram()
    for k in range(1000):
        many.collect(torch.randn(64, generator=g) * 2.0 ** (k % 40 - 20))
    assert one.nbytes == many.nbytes <= 64 * 1024
    size = {k: (v.shape, v.dtype) for k, v in one.state_dict().items()}
    assert size == {k: (v.shape, v.dtype) for k, v in many.state_dict().items()}
    assert many.count == 64_000


def test_nonfinite_counted_and_excluded() -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(1000, generator=g)
    dirty = x.clone()
    dirty[[3, 10, 500, 999]] = torch.tensor([math.nan, math.inf, -math.inf, -math.nan])
    clean = torch.cat([dirty[:3], dirty[4:10], dirty[11:500], dirty[501:999]])
    h = _collect([dirty])
    ref = _collect([clean])
    assert h.nonfinite == 4
    s, r = h.compute(), ref.compute()
    assert s.nonfinite == 4 and s.count == 996
    assert (s.min, s.max, s.percentiles) == (r.min, r.max, r.percentiles)
    assert math.isfinite(s.min) and math.isfinite(s.max)


def test_nonfinite_raise_mode_leaves_state_untouched() -> None:
    h = StreamingHistogram(on_nonfinite="raise")
    h.collect(torch.ones(10))
    bad = torch.tensor([1.0, math.nan, math.inf, -math.inf, math.inf], dtype=torch.float16)
    with pytest.raises(NonFiniteActivation, match=r"4 of 5 values are non-finite \(NaN: 1, \+Inf: 2, -Inf: 1\)"):
        h.collect(bad)
    assert issubclass(NonFiniteActivation, ValueError)
    assert h.count == 10 and h.nonfinite == 0
    with pytest.raises(ValueError, match="on_nonfinite"):
        StreamingHistogram(on_nonfinite="ignore")  # type: ignore[arg-type]


def test_empty_compute_errors() -> None:
    with pytest.raises(EmptyObserverError, match="no data collected"):
        StreamingHistogram().compute()
    h = StreamingHistogram()
    h.collect(torch.empty(0, 8))
    with pytest.raises(EmptyObserverError):
        h.compute()
    h.collect(torch.tensor([math.nan, math.inf]))
    with pytest.raises(EmptyObserverError, match="all 2 collected values were NaN or Inf"):
        h.compute()
    h.reset()
    assert h.nonfinite == 0
    with pytest.raises(TypeError, match="floating-point"):
        h.collect(torch.arange(4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(9)
    x = (torch.randn(4, 256, 32, generator=g) * 3).to(dtype).transpose(0, 2)  # non-contiguous too
    h = _collect([x])
    ref = _collect([x.float()])
    assert _state_equal(h, ref)
    s = h.compute()
    assert s.min == float(x.min()) and s.max == float(x.max())
    _, exact = _exact([x.float()])
    _assert_within_bin(h, s, exact)


def test_sync_free_path_matches_cpu_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The accelerator path (histc binning, branch-free min/max) gives the CPU path's state, checked here on CPU."""
    batches = _batches("heavy", 10)
    batches[3] = batches[3].clone().reshape(-1)
    batches[3][[0, 7]] = torch.tensor([math.nan, -math.inf])
    batches += [batches[1].half(), batches[2].bfloat16(), torch.full((5,), math.inf)]
    cpu = _collect(batches)
    monkeypatch.setattr(histogram_module, "_sync_free", lambda device: True)
    sync_free = _collect(batches)
    assert _state_equal(cpu, sync_free)
    assert sync_free.nonfinite == 7


def test_chunking_of_large_tensors_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _batches("growing", 16)
    whole = _collect(batches)
    monkeypatch.setattr(histogram_module, "_CHUNK", 999)  # every batch split into chunks, windows slide between
    assert _state_equal(whole, _collect(batches))


def test_collect_inside_and_outside_inference_mode() -> None:
    g = torch.Generator().manual_seed(15)
    batches = [torch.randn(300, generator=g) * 4.0**k for k in range(4)]
    h = StreamingHistogram()
    with torch.inference_mode():
        h.collect(batches[0])
    h.collect(batches[1])
    with torch.inference_mode():
        h.collect(batches[2])
    h.collect(batches[3])
    assert _state_equal(h, _collect(batches))


def _special_values(dtype: torch.dtype) -> torch.Tensor:
    info = torch.finfo(dtype)
    special = [0.0, -0.0, info.tiny, -info.tiny, info.tiny / 4, info.max, -info.max, info.eps, 1.0, -1.0]
    special += [math.nan, -math.nan, math.inf, -math.inf]
    g = torch.Generator().manual_seed(14)
    span = 12 if dtype == torch.float16 else 30  # binades either side of 1, inside the dtype's range
    bulk = torch.randn(40000, generator=g) * torch.exp2(torch.randint(-span, span, (40000,), generator=g).float())
    return torch.cat([torch.tensor(special), bulk]).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_table_and_arithmetic_binning_agree(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    """Pattern-table binning (large tensors) == bit-arithmetic binning (small ones), edge values included."""
    x = _special_values(dtype)
    states = []
    for small in (0, 1 << 30):
        for sync_free in (False, True):
            monkeypatch.setattr(histogram_module, "_SMALL", small)
            monkeypatch.setattr(histogram_module, "_sync_free", lambda device, flag=sync_free: flag)
            states.append(_collect([x[:7], x[7:20000], x[20000:]]))
    assert all(_state_equal(states[0], other) for other in states[1:])
    s = states[0].compute()
    assert s.nonfinite == 4 and s.count == x.numel() - 4
    finite = x[torch.isfinite(x)].double()
    assert (s.min, s.max) == (float(finite.min()), float(finite.max()))
    _assert_monotone(s)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    batches = _batches("heavy", 11)
    cpu = _collect(batches)
    gpu = _collect([x.cuda().half() for x in batches])
    ref = _collect([x.half() for x in batches])
    assert _state_equal(gpu, ref)
    assert cpu.compute().count == gpu.compute().count


def test_merge_rejects_other_binning() -> None:
    with pytest.raises(ValueError, match="different binning"):
        StreamingHistogram().merge(StreamingHistogram(mantissa_bits=5))


def test_act_stats_json_round_trip() -> None:
    s = _collect(_batches("lognormal", 12)).compute()
    d = json.loads(json.dumps(s.to_json()))
    assert set(d) == {"min", "max", "absmax", "percentiles", "count", "nonfinite"}
    assert set(d["percentiles"]) == {"1", "5", "10", "90", "95", "99"}
    assert ActStats.from_json(d) == s


def _reference_quantiles(h: StreamingHistogram, qs: list[float]) -> list[float]:
    """The percentile rule written out for one histogram: locate rank q (n - 1) in the cumulative counts and
    interpolate inside its bin, whose edges are clipped to the exact min and max."""
    edges, counts = h.bin_edges()
    lo, hi = float(h._min), float(h._max)
    edges, cum = edges.clamp(lo, hi), counts.cumsum(0)
    out = []
    for q in qs:
        rank = q * (int(cum[-1]) - 1)
        b = min(
            int(torch.searchsorted(cum.double(), torch.tensor([rank], dtype=torch.float64), right=True)), len(cum) - 1
        )
        inside, before = float(counts[b]), float(cum[b] - counts[b])
        frac = min(max((rank - before + 0.5) / inside, 0.0), 1.0)
        out.append(min(max(float(edges[b]) + frac * float(edges[b + 1] - edges[b]), lo), hi))
    return out


def test_stats_from_state_equals_the_rule_per_histogram() -> None:
    hists = [
        _collect(_batches(kind, seed)) for seed in range(3) for kind in ("gaussian", "lognormal", "heavy", "growing")
    ]
    hists.insert(5, StreamingHistogram())  # empty: None
    nan_only = StreamingHistogram()
    nan_only.collect(torch.tensor([math.nan]))
    hists.insert(9, nan_only)
    qs = [p / 100 for p in PERCENTILES]
    many = stats_from_state(stack_states(hists))
    assert many[5] is None and many[9] is None
    for h, s in zip(hists, many, strict=True):
        if h.count == 0:
            continue
        assert list(s.percentiles.values()) == _reference_quantiles(h, qs)
        assert (s.min, s.max, s.count, s.nonfinite) == (float(h._min), float(h._max), h.count, h.nonfinite)
        assert s == h.compute()


def test_stacked_states_round_trip() -> None:
    hists = [_collect(_batches(kind, 4)) for kind in ("gaussian", "heavy", "growing")]
    hists[1].collect(torch.tensor([math.inf, 1.0]))
    back = unstack_states(stack_states(hists))
    assert all(_state_equal(a, b) for a, b in zip(hists, back, strict=True))
    with pytest.raises(ValueError, match="different binnings"):
        stack_states([StreamingHistogram(), StreamingHistogram(mantissa_bits=3)])
    bad = stack_states(hists)
    bad["top"] = bad["top"][:2]
    with pytest.raises(ValueError, match="rows"):
        unstack_states(bad)


@pytest.mark.parametrize("size", [1000, 300_000])  # the small-tensor and the pattern-table paths
def test_weighted_collect_equals_repeated_collects(size: int) -> None:
    g = torch.Generator().manual_seed(11)
    xs = [torch.randn(size, generator=g) * 10.0**e for e in (0, 3, -2)]
    xs[1][:3] = torch.tensor([math.nan, math.inf, 2.0])
    weighted, repeated = StreamingHistogram(), StreamingHistogram()
    for x, w in zip(xs, (3, 1, 4), strict=True):
        weighted.collect(x, weight=w)
        for _ in range(w):
            repeated.collect(x)
    assert _state_equal(weighted, repeated) and weighted.nonfinite == 2
    with pytest.raises(ValueError, match="weight"):
        weighted.collect(xs[0], weight=0)
