"""Bounded-memory streaming activation statistics: exact min/max/absmax and histogram percentiles.

Design: a log-magnitude histogram on the float32 bit pattern with a sliding exponent window.

- **Binning.** A finite value is binned by its sign and by the float32 exponent and top ``m`` mantissa bits of its
  magnitude (default ``m = 7``: exactly bfloat16 truncation). That is a function of the value's top 16 bits only
  (its whole bit pattern for fp16/bf16), so a collect reads each value's 16-bit head pattern with two integer ops
  and counts them (``bincount`` over the 65,536 patterns on CPU, then folded into the bins through a 65,536-entry
  table); on accelerators the table is gathered per element and counted with ``histc``, which unlike ``bincount``
  needs no device sync to size its output. Tensors under 256k elements skip the table and bin by bit arithmetic.
  No ``log``, no search, no Python loop over elements, all on the tensor's own device.
- **Precision.** A bin in binade ``[2^e, 2^(e+1))`` has width ``2^(e-m)``: its width is at most ``2^-m`` (0.78 %)
  of any value in it, at any magnitude. This is what a fixed-range linear histogram cannot give: with the bulk at
  N(0, 1) and outliers up to 2000, a linear histogram with as many bins as this one (7,682) over
  ``[-absmax, absmax]`` has bins 0.52 standard deviations of the bulk wide; here the bins at the bulk's p1..p99
  (``|x| < 4``) are at most ``2^-6 = 0.0156`` wide (1.6 % of the std), whatever the outliers.
- **Window.** Counts are kept for the ``W`` binades (default 30) that end at the largest finite magnitude seen so far,
  plus one underflow bin per sign for ``|x| < 2^(top - W + 1)``, that is below ``absmax * 2^-(W-1)`` (about
  ``1.9e-9 * absmax``): finer than any format in the bag resolves once scaled to that range (FP8 E4M3 spans about
  ``2^18``, INT16 ``2^15``). When a batch raises the top binade the window slides up: the bins that fall out merge
  into the underflow bin. The bin edges nest, so this re-binning is exact: the counts equal those of a histogram
  binned at once with the final window, and ``merge`` is exact for the same reason. Range growth between batches
  therefore costs no precision apart from the (tiny) underflow pooling.
- **Percentiles** follow ``torch.quantile``'s linear interpolation: the target rank ``q (n - 1)`` is located in the
  cumulative counts and interpolated linearly inside its bin, whose edges are clipped to the exact min and max. The
  estimate lies in the bin that holds the order statistic at that rank, so it is within that bin's width of the exact
  quantile (when neighbouring order statistics share a bin, as they do on continuous data), and it is monotone in
  ``q``. min, max and absmax are exact (as float32).
- **Memory** is fixed: ``2 * (W * 2^m + 1)`` int64 counts (61,456 bytes for the defaults) plus four scalars, whatever
  the number of batches; no activation is stored. Large tensors are binned in chunks of at most ``2^24`` elements,
  which bounds the temporaries and keeps the float32 ``histc`` counts exact. The pattern tables are shared by all
  observers (512 KB per input dtype and device).
- **Cost.** ``collect`` makes about four elementwise passes (min/max, head pattern, count) plus a fixed number of
  small ops, and on accelerators no host sync in ``on_nonfinite="count"`` mode; ``compute`` syncs once.

Non-finite values (NaN, +-Inf) never enter the histogram or min/max: they are counted (``nonfinite``), or with
``on_nonfinite="raise"`` rejected with :class:`NonFiniteActivation` before any state changes (one sync per call).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from anna.errors import AnnaError
from anna.stats import ActStats

__all__ = [
    "PERCENTILES",
    "ActStats",
    "EmptyObserverError",
    "NonFiniteActivation",
    "StreamingHistogram",
    "stack_states",
    "stats_from_state",
    "unstack_states",
]

PERCENTILES: tuple[int, ...] = (1, 5, 10, 90, 95, 99)
"""The percentiles that :meth:`StreamingHistogram.compute` reports, keyed by ``str(p)``."""

OnNonFinite = Literal["count", "raise"]

_CHUNK = 1 << 24  # elements per binning pass: float32 histc counts stay exact, temporaries stay bounded
_SMALL = 1 << 18  # below this many elements, bin by bit arithmetic: the 65,536-pattern table costs more
_ABS_MASK = 0x7FFFFFFF
_INF = math.inf


class NonFiniteActivation(AnnaError, ValueError):
    """A collected tensor holds NaN or Inf values (raised in ``on_nonfinite="raise"`` mode)."""


class EmptyObserverError(RuntimeError):
    """``compute()`` was called on an observer that has collected no finite value."""


def _check_mode(on_nonfinite: str) -> None:
    if on_nonfinite not in ("count", "raise"):
        raise ValueError(f"on_nonfinite must be 'count' or 'raise', not {on_nonfinite!r}")


def _raise_if_nonfinite(x: Tensor) -> None:
    """Raise :class:`NonFiniteActivation` describing ``x``'s non-finite values, if it has any (syncs)."""
    if bool(torch.isfinite(x).all()):
        return
    nan = int(torch.isnan(x).sum())
    posinf = int(torch.isposinf(x).sum())
    neginf = int(torch.isneginf(x).sum())
    raise NonFiniteActivation(
        f"{nan + posinf + neginf} of {x.numel()} values are non-finite (NaN: {nan}, +Inf: {posinf}, -Inf: {neginf}) "
        f"in a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    )


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


class StreamingHistogram:
    """Streaming min/max/absmax and percentiles of activations, in fixed memory.

    ``collect(x)`` for each batch (any shape, fp32/fp16/bf16, CPU or CUDA; other float dtypes are rounded to
    float32), then ``compute()`` gives an :class:`ActStats`. See the module docstring for the binning and precision.
    """

    def __init__(self, mantissa_bits: int = 7, exponent_window: int = 30, on_nonfinite: OnNonFinite = "count") -> None:
        """``mantissa_bits``: relative bin width ``2^-m``; ``exponent_window``: binades kept below the top."""
        if not 0 <= mantissa_bits <= 7:
            raise ValueError(f"mantissa_bits must be in 0..7, not {mantissa_bits}")
        if not 1 <= exponent_window <= 254:
            raise ValueError(f"exponent_window must be in 1..254, not {exponent_window}")
        _check_mode(on_nonfinite)
        self.mantissa_bits = mantissa_bits
        self.exponent_window = exponent_window
        self.on_nonfinite: OnNonFinite = on_nonfinite
        self._half = (exponent_window << mantissa_bits) + 1  # bins per sign, underflow bin first
        self._device = torch.device("cpu")
        self.reset()

    # -- state -----------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything collected (keeps the device).

        The state tensors are never changed in place (every update makes new ones), so the empty state is a set of
        shared constants: many observers start at no cost.
        """
        key = (self._device, self._half)
        if key not in _EMPTY:
            dev = self._device
            _EMPTY[key] = (
                torch.zeros(2, self._half, dtype=torch.int64, device=dev),  # [positive, negative] x magnitude
                torch.zeros((), dtype=torch.int32, device=dev),  # biased float32 exponent of the window's top
                torch.full((), _INF, dtype=torch.float32, device=dev),
                torch.full((), -_INF, dtype=torch.float32, device=dev),
                torch.zeros((), dtype=torch.int64, device=dev),
            )
        self._counts, self._top, self._min, self._max, self._nonfinite = _EMPTY[key]
        self._host: tuple[float, float, int] | None = None  # (min, max, top) read back, for the CPU small path

    def _state(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self._counts, self._top, self._min, self._max, self._nonfinite

    def _to(self, device: torch.device) -> None:
        if device != self._device:
            self._device = device
            self._counts, self._top, self._min, self._max, self._nonfinite = (t.to(device) for t in self._state())
            self._host = None

    @property
    def nbytes(self) -> int:
        """Bytes of state held, constant whatever was collected."""
        return sum(t.numel() * t.element_size() for t in self._state())

    @property
    def count(self) -> int:
        """Number of finite values collected (syncs)."""
        return int(self._counts.sum())

    @property
    def nonfinite(self) -> int:
        """Number of NaN/Inf values collected and excluded (syncs)."""
        return int(self._nonfinite)

    @property
    def nonfinite_tensor(self) -> Tensor:
        """The non-finite count as a 0-dim int64 tensor on the state's device (no sync). Never updated in place:
        a reference taken before a collect keeps the count before it."""
        return self._nonfinite

    # -- window ----------------------------------------------------------------------------------------------------

    def _slide(self, counts: Tensor, top: Tensor, new_top: Tensor) -> Tensor:
        """Counts re-binned from the window ending at binade ``top`` to the one ending at ``new_top >= top``.

        Branch-free (no sync): the bins that leave the window add into the underflow bin, the rest move down. On
        the CPU, where host reads are free, the same moves are done by slicing (a strided ``index_add_`` is slow).
        """
        if counts.device.type == "cpu":
            shift, half = (int(new_top) - int(top)) << self.mantissa_bits, self._half
            out = torch.zeros_like(counts)
            if shift >= half:
                out[:, 0] = counts.sum(1)
            else:
                out[:, 0] = counts[:, : shift + 1].sum(1)
                out[:, 1 : half - shift] = counts[:, shift + 1 :]
            return out
        shift = (new_top - top) << self.mantissa_bits
        dest = (_arange(self._half, counts.device) - shift).clamp_(min=0)
        return torch.zeros_like(counts).index_add_(1, dest, counts)

    # -- collect ---------------------------------------------------------------------------------------------------

    def collect(self, x: Tensor, weight: int = 1) -> None:
        """Add every value of ``x`` to the statistics, ``weight`` times (the same state as collecting ``x`` that many
        times); non-finite values are counted (or rejected) and excluded."""
        x = _as_float_tensor(x)
        if not (isinstance(weight, int) and weight >= 1):
            raise ValueError(f"weight must be a positive int, not {weight!r}")
        if self.on_nonfinite == "raise":
            _raise_if_nonfinite(x)
        if x.numel() == 0:
            return
        self._to(x.device)
        if x.numel() <= _CHUNK:
            self._collect_chunk(x if x.dim() == 1 else x.reshape(-1), weight)
            return
        flat = x.reshape(-1)
        for start in range(0, flat.numel(), _CHUNK):
            self._collect_chunk(flat[start : start + _CHUNK], weight)

    def _collect_chunk(self, chunk: Tensor, weight: int) -> None:
        m, half = self.mantissa_bits, self._half
        if chunk.dtype not in (torch.float32, *_NATIVE_16):
            chunk = chunk.float()  # float64 and others: rounded to float32
        if not chunk.is_contiguous():
            chunk = chunk.contiguous()
        sync_free = _sync_free(chunk.device)
        if not sync_free and chunk.numel() < _SMALL and self._collect_small_cpu(chunk, weight):
            return
        lo, hi = _finite_min_max(chunk, sync_free)
        self._min = torch.minimum(self._min, lo)
        self._max = torch.maximum(self._max, hi)
        self._host = None
        # the window's top is the binade of the running absmax (-1 from -inf while nothing finite was seen)
        top_now = torch.maximum(self._max, -self._min).view(torch.int32) >> 23
        new_top = torch.maximum(self._top, top_now)
        if sync_free or bool(new_top != self._top):  # on the CPU the check is free and saves the slide
            self._counts = self._slide(self._counts, self._top, new_top)
            self._top = new_top
        # bin index: magnitude key relative to the window (0 = underflow, half = non-finite), plus the sign's row
        low_key = ((new_top - (self.exponent_window - 1)) << m) - 1
        binner = _bin_direct if chunk.numel() < _SMALL else _bin_table
        hist = binner(chunk, low_key, m, half, sync_free).view(2, half + 1)
        if weight != 1:
            hist = hist * weight
        self._counts = self._counts + hist[:, :half]
        self._nonfinite = self._nonfinite + hist[:, half].sum()

    def _collect_small_cpu(self, chunk: Tensor, weight: int = 1) -> bool:
        """The CPU path for a small contiguous chunk with only finite values, in few ops: the scalar bookkeeping is
        done in Python (host reads are free on the CPU). Same state as the general path; returns False (nothing
        collected) when the chunk holds a non-finite value, for the general path to handle."""
        lo, hi = torch.aminmax(chunk)
        lo, hi = lo.item(), hi.item()
        if not (math.isfinite(lo) and math.isfinite(hi)):  # NaN propagates through aminmax, Inf shows as is
            return False
        m, half = self.mantissa_bits, self._half
        if self._host is None:
            self._host = (self._min.item(), self._max.item(), self._top.item())
        cur_lo, cur_hi, top = self._host
        if lo < cur_lo:
            self._min = torch.tensor(lo, dtype=torch.float32)
        if hi > cur_hi:
            self._max = torch.tensor(hi, dtype=torch.float32)
        new_lo, new_hi = min(lo, cur_lo), max(hi, cur_hi)
        absmax = max(new_hi, -new_lo)  # >= 0 and exactly a float32: a value of the data
        top_now = struct.unpack("<i", struct.pack("<f", absmax))[0] >> 23
        if top_now > top:
            new_top = torch.tensor(top_now, dtype=torch.int32)
            if cur_lo <= cur_hi:  # else nothing finite was counted yet: the counts are all zero
                self._counts = self._slide(self._counts, self._top, new_top)
            self._top, top = new_top, top_now
        self._host = (new_lo, new_hi, top)
        low_key = ((top - (self.exponent_window - 1)) << m) - 1
        bits = (chunk if chunk.dtype == torch.float32 else chunk.float()).view(torch.int32)
        # finite values at or below the window's top: the magnitude index is in [0, half), no non-finite bin
        idx = torch.bitwise_and(bits, _ABS_MASK).bitwise_right_shift_(23 - m).sub_(low_key).clamp_(min=0)
        idx.add_(bits.bitwise_right_shift(31).bitwise_and_(half))
        hist = torch.bincount(idx, minlength=2 * half).view(2, half)
        self._counts = self._counts + (hist if weight == 1 else hist * weight)
        return True

    # -- merge / state_dict ----------------------------------------------------------------------------------------

    def merge(self, other: StreamingHistogram) -> None:
        """Add ``other``'s statistics to this observer's (exact: same result as collecting both streams here)."""
        if not isinstance(other, StreamingHistogram):
            raise TypeError(f"cannot merge {type(other).__name__} into StreamingHistogram")
        if (other.mantissa_bits, other.exponent_window) != (self.mantissa_bits, self.exponent_window):
            raise ValueError(
                f"cannot merge histograms with different binning: (mantissa_bits, exponent_window) "
                f"{(self.mantissa_bits, self.exponent_window)} vs {(other.mantissa_bits, other.exponent_window)}"
            )
        dev = self._device
        o_counts, o_top = other._counts.to(dev), other._top.to(dev)
        new_top = torch.maximum(self._top, o_top)
        self._counts = self._slide(self._counts, self._top, new_top) + self._slide(o_counts, o_top, new_top)
        self._top = new_top
        self._min = torch.minimum(self._min, other._min.to(dev))
        self._max = torch.maximum(self._max, other._max.to(dev))
        self._host = None
        self._nonfinite = self._nonfinite + other._nonfinite.to(dev)

    def state_dict(self) -> dict[str, Tensor]:
        """The full state as CPU tensors, ready for safetensors (prefix the keys per observer)."""
        return {
            "counts": self._counts.cpu().clone(),
            "top": self._top.cpu().clone(),
            "min": self._min.cpu().clone(),
            "max": self._max.cpu().clone(),
            "nonfinite": self._nonfinite.cpu().clone(),
            "mantissa_bits": torch.tensor(self.mantissa_bits, dtype=torch.int64),
            "exponent_window": torch.tensor(self.exponent_window, dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, Tensor],
        *,
        on_nonfinite: OnNonFinite = "count",
        device: torch.device | str | None = None,
    ) -> StreamingHistogram:
        """Rebuild an observer from :meth:`state_dict` output, to resume collecting or compute."""
        missing = {"counts", "top", "min", "max", "nonfinite", "mantissa_bits", "exponent_window"} - set(state)
        if missing:
            raise ValueError(f"StreamingHistogram state is missing {sorted(missing)}")
        obs = cls(int(state["mantissa_bits"]), int(state["exponent_window"]), on_nonfinite=on_nonfinite)
        counts = state["counts"]
        if tuple(counts.shape) != (2, obs._half):
            raise ValueError(f"StreamingHistogram counts have shape {tuple(counts.shape)}, expected {(2, obs._half)}")
        obs._counts = counts.to(torch.int64).clone()
        obs._top = state["top"].to(torch.int32).reshape(()).clone()
        obs._min = state["min"].to(torch.float32).reshape(()).clone()
        obs._max = state["max"].to(torch.float32).reshape(()).clone()
        obs._host = None
        obs._nonfinite = state["nonfinite"].to(torch.int64).reshape(()).clone()
        obs._device = obs._counts.device
        if device is not None:
            obs._to(torch.device(device))
        return obs

    # -- compute ---------------------------------------------------------------------------------------------------

    def _magnitudes(self, keys: Tensor) -> Tensor:
        return _magnitudes(keys, self.mantissa_bits)

    def bin_edges(self) -> tuple[Tensor, Tensor]:
        """``(edges, counts)`` of the current histogram in ascending value order (CPU; edges float64, 2H + 1)."""
        counts = self._counts.cpu()
        upper = _upper_edges(self._top.cpu().reshape(1), self.mantissa_bits, self.exponent_window, self._half)[0]
        edges = torch.cat([-upper.flip(0), torch.zeros(1, dtype=torch.float64), upper])
        return edges, torch.cat([counts[1].flip(0), counts[0]])

    def bin_width_at(self, value: float) -> float:
        """Width of the bin that holds ``value`` in the current window (the percentile tolerance at that value)."""
        m = self.mantissa_bits
        key = int(torch.tensor(abs(float(value)), dtype=torch.float32).view(torch.int32)) >> (23 - m)
        low_key = (int(self._top) - self.exponent_window + 1) << m
        if key < low_key:  # underflow bin [0, 2^low)
            return float(self._magnitudes(torch.tensor([low_key]))[0])
        lo, hi = self._magnitudes(torch.tensor([key, key + 1]))
        return float(hi - lo)

    def quantiles(self, qs: Iterable[float]) -> list[float]:
        """Estimates of ``torch.quantile(all_data, q)`` (linear interpolation) for each ``q`` in [0, 1]."""
        qs_t = _check_quantiles(qs)
        if self.count == 0:
            self._raise_empty()
        state = stack_states([self])
        return _quantile_rows(state, qs_t)[0].tolist()

    def _raise_empty(self) -> None:
        nonfinite = int(self._nonfinite)
        if nonfinite:
            raise EmptyObserverError(f"no finite value collected: all {nonfinite} collected values were NaN or Inf")
        raise EmptyObserverError("no data collected: call collect() with a non-empty tensor before compute()")

    def compute(self) -> ActStats:
        """Min, max, absmax (exact) and percentiles 1/5/10/90/95/99 of every finite value collected."""
        stats = stats_from_state(stack_states([self]))[0]
        if stats is None:
            self._raise_empty()
        return stats


# -- many histograms at once: stacked state and vectorized statistics -----------------------------------------------

_ROWS = 8  # histograms per vectorized step of `stats_from_state`: bounds its temporaries to about 1 MB


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


def stack_states(hists: Sequence[StreamingHistogram]) -> dict[str, Tensor]:
    """The states of histograms with the same binning as one set of CPU tensors, row ``i`` for ``hists[i]``:
    ``counts`` (N, 2, H) (int32 where every histogram counted fewer than 2^31 values, else int64),
    ``top``/``min``/``max``/``nonfinite`` (N,), and the binning as two scalars."""
    if not hists:
        raise ValueError("stack_states needs at least one histogram")
    binning = {(h.mantissa_bits, h.exponent_window) for h in hists}
    if len(binning) > 1:
        raise ValueError(f"cannot stack histograms with different binnings {sorted(binning)}")
    m, window = binning.pop()
    fits = all(int(h._counts.sum()) < 2**31 for h in hists)  # every bin then fits int32: half the bytes
    counts = torch.empty((len(hists), *hists[0]._counts.shape), dtype=torch.int32 if fits else torch.int64)
    for row, h in zip(counts, hists, strict=True):
        row.copy_(h._counts)
    return {
        "counts": counts,
        "top": torch.stack([h._top.cpu() for h in hists]),
        "min": torch.stack([h._min.cpu() for h in hists]),
        "max": torch.stack([h._max.cpu() for h in hists]),
        "nonfinite": torch.stack([h._nonfinite.cpu() for h in hists]),
        "mantissa_bits": torch.tensor(m, dtype=torch.int64),
        "exponent_window": torch.tensor(window, dtype=torch.int64),
    }


def unstack_states(state: Mapping[str, Tensor]) -> list[StreamingHistogram]:
    """Inverse of :func:`stack_states` (each row is checked as :meth:`StreamingHistogram.from_state_dict` does)."""
    rows = {"counts", "top", "min", "max", "nonfinite"}
    missing = (rows | {"mantissa_bits", "exponent_window"}) - set(state)
    if missing:
        raise ValueError(f"stacked histogram state is missing {sorted(missing)}")
    n = len(state["counts"])
    if any(state[k].shape[:1] != (n,) for k in rows):
        raise ValueError("stacked histogram state has fields with different numbers of rows")
    binning = {"mantissa_bits": state["mantissa_bits"], "exponent_window": state["exponent_window"]}
    return [StreamingHistogram.from_state_dict({**{k: state[k][i] for k in rows}, **binning}) for i in range(n)]


def stats_from_state(state: Mapping[str, Tensor]) -> list[ActStats | None]:
    """The statistics of every row of a :func:`stack_states` state (as ``compute()`` gives them), vectorized in
    blocks of rows; None for a row that holds no finite value."""
    qs = torch.tensor([p / 100 for p in PERCENTILES], dtype=torch.float64)
    mins, maxs, nonfinite = state["min"].tolist(), state["max"].tolist(), state["nonfinite"].tolist()
    out: list[ActStats | None] = []
    for start in range(0, len(state["counts"]), _ROWS):
        block = {k: (v[start : start + _ROWS] if v.ndim else v) for k, v in state.items()}
        n = dict(enumerate(block["counts"].sum((1, 2)).tolist(), start))
        for j, pv in enumerate(_quantile_rows(block, qs).tolist(), start):
            if n[j] == 0:  # the block's arithmetic for this row is meaningless and discarded
                out.append(None)
                continue
            lo, hi = mins[j], maxs[j]
            out.append(
                ActStats(
                    min=lo,
                    max=hi,
                    absmax=max(abs(lo), abs(hi)),
                    percentiles={str(p): v for p, v in zip(PERCENTILES, pv, strict=True)},
                    count=n[j],
                    nonfinite=nonfinite[j],
                )
            )
    return out
