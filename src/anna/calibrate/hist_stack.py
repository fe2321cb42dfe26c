"""Many histograms at once: their states stacked into one set of tensors (checkpoints, stats.safetensors) and the
statistics of every row, vectorized."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from anna.calibrate.binning import _quantile_rows
from anna.calibrate.histogram import PERCENTILES, StreamingHistogram
from anna.stats import ActStats

_ROWS = 8  # histograms per vectorized step of `stats_from_state`: bounds its temporaries to about 1 MB


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
