"""The streaming histogram's pure tensor arithmetic: binning kernels (head patterns, counts), exact finite min/max,
bin edges and the vectorized quantile rule. No state; `anna.calibrate.histogram` holds the observers."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

_ABS_MASK = 0x7FFFFFFF
_INF = math.inf

_NATIVE_16 = (torch.float16, torch.bfloat16)
_PATTERNS: dict[tuple[torch.dtype, torch.device, int, int], tuple[Tensor, Tensor]] = {}
_ARANGES: dict[tuple[torch.device, int], Tensor] = {}
_EMPTY: dict[tuple[torch.device, int], tuple[Tensor, ...]] = {}  # the empty state per (device, bins per sign)


def _arange(n: int, device: torch.device) -> Tensor:
    """Cached int32 ``arange(n)`` on ``device``."""
    if (device, n) not in _ARANGES:
        _ARANGES[device, n] = torch.arange(n, dtype=torch.int32, device=device)
    return _ARANGES[device, n]


def _sync_free(device: torch.device) -> bool:
    """Whether to bin without any host sync (accelerators) rather than with the faster CPU kernels."""
    return device.type != "cpu"


def _heads(x: Tensor) -> Tensor:
    """Each value's 16-bit head pattern as int32 in [0, 65536): all of an fp16/bf16 value, float32's top 16 bits."""
    if x.dtype in _NATIVE_16:
        return x.view(torch.int16).int().bitwise_and_(0xFFFF)
    return x.view(torch.int32).bitwise_right_shift(16).bitwise_and_(0xFFFF)


def _pattern_keys(dtype: torch.dtype, device: torch.device, m: int, half: int) -> tuple[Tensor, Tensor]:
    """For each of the 65,536 head patterns of ``dtype``: the float32 magnitude key, and the sign's row offset.

    The magnitude key is ``|value|``'s float32 bits shifted right by ``23 - m`` (exponent and top ``m`` mantissa
    bits; ``>= 255 << m`` for NaN/Inf), the sign offset is ``half + 1`` where the sign bit is set, else 0. A float32
    value's bin depends on its top 16 bits only, since ``m <= 7``. Cached per (dtype, device, m, half): 512 KB.
    """
    cache_key = (dtype, device, m, half)
    if cache_key not in _PATTERNS:
        pats = torch.arange(1 << 16, dtype=torch.int64)
        if dtype in _NATIVE_16:
            values = torch.where(pats >= 1 << 15, pats - (1 << 16), pats).to(torch.int16).view(dtype).float()
        else:
            bits = pats << 16
            values = torch.where(bits >= 1 << 31, bits - (1 << 32), bits).to(torch.int32).view(torch.float32)
        bits32 = values.view(torch.int32)
        key = torch.bitwise_and(bits32, _ABS_MASK).bitwise_right_shift_(23 - m)
        sign_offset = (bits32 < 0).int() * (half + 1)
        _PATTERNS[cache_key] = (key.to(device), sign_offset.to(device))
    return _PATTERNS[cache_key]


def _count_bins(idx: Tensor, nbins: int, sync_free: bool) -> Tensor:
    """int64 counts of the integer-valued ``idx`` over ``[0, nbins)``.

    Accelerators use float32 ``histc``, which sizes its output from its arguments (``bincount`` syncs to read the
    input's max) and counts exactly for chunks of up to 2^24 elements; the CPU uses ``bincount``, and so does CUDA
    under ``torch.use_deterministic_algorithms`` (where its ``histc`` raises; the counts are exact either way).
    """
    if sync_free and not torch.are_deterministic_algorithms_enabled():
        return torch.histc(idx.float(), bins=nbins, min=-0.5, max=nbins - 0.5).long()
    return torch.bincount(idx, minlength=nbins)


def _bin_direct(x: Tensor, low_key: Tensor, m: int, half: int, sync_free: bool) -> Tensor:
    """Counts per bin by bit arithmetic: ``2 * (half + 1)``, rows [positive, negative] x [magnitudes, non-finite]."""
    bits = x.float().contiguous().view(torch.int32)
    idx = torch.bitwise_and(bits, _ABS_MASK).bitwise_right_shift_(23 - m)
    idx.sub_(low_key).clamp_(0, half)
    idx.add_(bits.bitwise_right_shift(31).bitwise_and_(half + 1))
    return _count_bins(idx, 2 * (half + 1), sync_free)


def _bin_table(x: Tensor, low_key: Tensor, m: int, half: int, sync_free: bool) -> Tensor:
    """Same counts as :func:`_bin_direct`, through a table over the 65,536 head patterns: fewer passes per element.

    CPU: ``bincount`` over the patterns, then the pattern histogram is folded through the table. Accelerators: the
    table is gathered per element and the bin indices counted.
    """
    key, sign_offset = _pattern_keys(x.dtype, x.device, m, half)
    table = (key - low_key).clamp_(0, half).add_(sign_offset)
    heads = _heads(x)
    nbins = 2 * (half + 1)
    if sync_free:
        return _count_bins(table.index_select(0, heads), nbins, sync_free)
    per_pattern = torch.bincount(heads, minlength=1 << 16)
    return torch.zeros(nbins, dtype=torch.int64, device=x.device).index_add_(0, table, per_pattern)


def _finite_min_max(x: Tensor, sync_free: bool) -> tuple[Tensor, Tensor]:
    """Exact min and max of ``x``'s finite values (+inf and -inf when it has none), as 0-dim tensors of x's dtype."""
    if not sync_free:  # one fused pass; the rare non-finite case takes the masked path below
        lo, hi = torch.aminmax(x)
        if bool(torch.isfinite(lo)) and bool(torch.isfinite(hi)):
            return lo, hi
    lo = x.nan_to_num(nan=_INF, posinf=_INF, neginf=_INF).amin()
    hi = x.nan_to_num(nan=-_INF, posinf=-_INF, neginf=-_INF).amax()
    return lo, hi


def _as_float_tensor(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got dtype {x.dtype}")
    return x.detach() if x.requires_grad else x


def _magnitudes(keys: Tensor, m: int) -> Tensor:
    """float64 magnitude at the start of each binning key (0 for keys <= 0, inf past the largest float)."""
    inside = (keys > 0) & (keys < (255 << m))
    bits = (keys.clamp(0, (255 << m) - 1) << (23 - m)).to(torch.int32)
    mags = bits.view(torch.float32).double()
    mags = torch.where(inside, mags, torch.zeros_like(mags))
    return torch.where(keys >= (255 << m), torch.full_like(mags, _INF), mags)


def _upper_edges(tops: Tensor, m: int, window: int, half: int) -> Tensor:
    """(N, half) float64 upper edge of every magnitude bin of N windows ending at binades ``tops``."""
    return _edges_at(tops, m, window, half, half + 1 + torch.arange(half, dtype=torch.int64).expand(len(tops), half))


def _edges_at(tops: Tensor, m: int, window: int, half: int, index: Tensor) -> Tensor:
    """float64 value edges ``index`` (N, K) of N windows in ascending value order: edge ``half`` is 0, edges
    ``half + 1 + i`` and ``half - 1 - i`` are the upper and lower edges (+-) of magnitude bin ``i``."""
    low_key = ((tops.to(torch.int64) - window + 1) << m)[:, None]
    mags = _magnitudes(low_key + (index - half).abs_() - 1, m)
    mags = torch.where(index == half, torch.zeros_like(mags), mags)
    return torch.where(index < half, -mags, mags)


def _check_quantiles(qs: Iterable[float]) -> Tensor:
    qs_t = torch.tensor(list(qs), dtype=torch.float64)
    if ((qs_t < 0) | (qs_t > 1)).any():
        raise ValueError(f"quantiles must be in [0, 1], got {qs_t.tolist()}")
    return qs_t


def _quantile_rows(state: Mapping[str, Tensor], qs: Tensor) -> Tensor:
    """(N, Q) quantile estimates of the N histograms in a :func:`stack_states` state (see ``quantiles``; rows
    that counted nothing give meaningless values).

    The target rank ``q (n - 1)`` is located in the cumulative counts (ascending value order) and interpolated
    linearly inside its bin, whose edges are clipped to the exact min and max.
    """
    counts, m, window = state["counts"], int(state["mantissa_bits"]), int(state["exponent_window"])
    half = counts.shape[-1]
    lo, hi = state["min"].double()[:, None], state["max"].double()[:, None]
    asc = torch.cat([counts[:, 1].flip(-1), counts[:, 0]], 1)
    cum = asc.cumsum(1)
    rank = qs[None, :] * (cum[:, -1:] - 1).double()
    # first bin whose cumulative count exceeds the rank (counts are integers: exceeding floor(rank) is the same)
    b = torch.searchsorted(cum, rank.floor().long(), right=True).clamp_(max=2 * half - 1)
    inside = asc.gather(1, b).double()
    before = cum.gather(1, b).double() - inside
    frac = ((rank - before + 0.5) / inside).clamp_(0.0, 1.0)
    left = torch.clamp(_edges_at(state["top"], m, window, half, b), lo, hi)
    right = torch.clamp(_edges_at(state["top"], m, window, half, b + 1), lo, hi)
    return torch.clamp(left + frac * (right - left), lo, hi)
