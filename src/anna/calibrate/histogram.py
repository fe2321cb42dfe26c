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

The binning kernels and the bin-edge and quantile arithmetic are in `anna.calibrate.binning`; many histograms at once
(stacked states, vectorized statistics) in `anna.calibrate.hist_stack`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import Tensor

from anna.calibrate.binning import (
    _ABS_MASK,
    _EMPTY,
    _INF,
    _NATIVE_16,
    _arange,
    _as_float_tensor,
    _bin_direct,
    _bin_table,
    _check_quantiles,
    _finite_min_max,
    _magnitudes,
    _quantile_rows,
    _sync_free,
    _upper_edges,
)
from anna.errors import AnnaError
from anna.stats import ActStats

__all__ = ["PERCENTILES", "EmptyObserverError", "NonFiniteActivation", "StreamingHistogram"]

PERCENTILES: tuple[int, ...] = (1, 5, 10, 90, 95, 99)
"""The percentiles that :meth:`StreamingHistogram.compute` reports, keyed by ``str(p)``."""

OnNonFinite = Literal["count", "raise"]

_CHUNK = 1 << 24  # elements per binning pass: float32 histc counts stay exact, temporaries stay bounded
_SMALL = 1 << 18  # below this many elements, bin by bit arithmetic: the 65,536-pattern table costs more


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
        from anna.calibrate.hist_stack import stack_states

        state = stack_states([self])
        return _quantile_rows(state, qs_t)[0].tolist()

    def _raise_empty(self) -> None:
        nonfinite = int(self._nonfinite)
        if nonfinite:
            raise EmptyObserverError(f"no finite value collected: all {nonfinite} collected values were NaN or Inf")
        raise EmptyObserverError("no data collected: call collect() with a non-empty tensor before compute()")

    def compute(self) -> ActStats:
        """Min, max, absmax (exact) and percentiles 1/5/10/90/95/99 of every finite value collected."""
        from anna.calibrate.hist_stack import stack_states, stats_from_state

        stats = stats_from_state(stack_states([self]))[0]
        if stats is None:
            self._raise_empty()
        return stats
