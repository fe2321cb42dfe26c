"""The observers of one calibration: a StreamingHistogram per (unit, activation) and a per-channel absmax per weight.

Follows the observer protocol of DESIGN.md: `collect`, then `compute`, then `reset`. State is a flat dict of CPU
tensors (the stacked histograms `hist/FIELD`) for safetensors, so a run can be checkpointed
and resumed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from anna.calibrate.hist_stack import stack_states, stats_from_state, unstack_states
from anna.calibrate.histogram import StreamingHistogram
from anna.errors import AnnaError
from anna.stats import ActStats
from anna.units import ACTIVATIONS

HIST = "hist"


@dataclass(frozen=True)
class NonFinite:
    """Non-finite values seen at one activation: how many, and the first prompt (or batch) that produced them."""

    unit: str
    activation: str
    count: int
    first_item: int

    def to_json(self) -> dict:
        return {"unit": self.unit, "activation": self.activation, "count": self.count, "first_item": self.first_item}


def _reads_are_free(t: Tensor) -> bool:
    """Whether reading `t` on the host costs no device sync (CPU tensors): then non-finite counts are read at once."""
    return t.device.type == "cpu"


class UnitObservers:
    """Histograms for every activation of every unit, in the units' kinds' `ACTIVATIONS` order.

    A histogram update has a fixed cost that dominates for small tensors, so tensors under `direct_bytes` are
    staged (copied) per activation and binned together: an activation's stage is binned before it would exceed
    `direct_bytes`; when all stages together reach `buffer_bytes`, the largest are binned until half remains; all
    are binned before any state is read. A tensor equal to the activation's last staged one (cross-attention
    inputs across denoising steps) is counted again rather than staged again, and binned once with that weight.
    The counts are the same as binning each tensor at once (the histogram's re-binning is exact); memory stays
    within `buffer_bytes`. `buffer_bytes=0` bins every tensor at once.
    """

    def __init__(
        self, units: Sequence[tuple[str, str]], buffer_bytes: int = 32 << 20, direct_bytes: int = 1 << 20
    ) -> None:
        """`units`: (name, kind) pairs."""
        self.kinds = dict(units)
        self.hists: dict[tuple[str, str], StreamingHistogram] = {
            (name, act): StreamingHistogram() for name, kind in units for act in ACTIVATIONS[kind]
        }
        self.buffer_bytes = buffer_bytes
        self.direct_bytes = min(direct_bytes, buffer_bytes)
        self.item = 0  # the prompt or batch being run, for the non-finite report
        self.order: list[tuple[str, str]] = []  # first-collect order, that is execution order
        self._seen: set[tuple[str, str]] = set()
        self._staged: dict[tuple[str, str], list[list]] = {}  # key -> [item, tensor, times counted]
        self._key_bytes: dict[tuple[str, str], int] = {}
        self._staged_bytes = 0
        self.nonfinite_first: dict[tuple[str, str], int] = {}
        self._reported: set[tuple[str, str]] = set()
        # accelerators: bins whose non-finite counts are read at the next `note_nonfinite` (key, count before,
        # count after, the chunks' items, per-chunk all-finite flags where the chunks span several items)
        self._pending: list[tuple[tuple[str, str], Tensor, Tensor, list[int], Tensor | None]] = []

    def collector(self, unit: str, activation: str, owned: bool = False) -> Callable[..., None]:
        """A fast `collect(x, repeat=False)` for one activation (what hooks and taps call).

        `owned`: the caller hands the tensors over (nothing else holds or changes them), so they are staged without
        a copy. `repeat`: a hint that `x` likely holds the values of this activation's previous tensor (say, a
        cross-attention key computed from unchanged text embeddings); when it equals the staged copy exactly, that
        copy is counted once more instead of staging `x` (same statistics, no copy and no second binning). The
        check is made on the CPU only: on accelerators it would cost a host sync, and binning there is cheap.
        """
        key = (unit, activation)
        hist = self.hists[key]
        order, staged, key_bytes, direct_bytes = self.order, self._staged, self._key_bytes, self.direct_bytes
        seen = self._seen

        def collect(x: Tensor, repeat: bool = False) -> None:
            if key not in seen:
                seen.add(key)
                order.append(key)
            size = x.nbytes
            if size >= direct_bytes:
                hist.collect(x)
                return
            contiguous = x.is_contiguous()
            src = x.detach() if x.requires_grad else x
            flat = src.view(-1) if contiguous else src.reshape(-1)
            chunks = staged.get(key)
            if chunks is not None:
                last = chunks[-1]
                # the exact check reads the result on the host: only where that is free (no device sync)
                same = repeat and last[1].shape == flat.shape and last[1].dtype == flat.dtype
                if same and _reads_are_free(flat) and torch.equal(last[1], flat):
                    last[2] += 1
                    return
                if key_bytes[key] + size > direct_bytes:
                    self._bin(key)
                    chunks = None
            if chunks is None:
                chunks = staged[key] = []
                key_bytes[key] = 0
            if contiguous and not owned:  # else the caller handed it over, or reshape made a copy already
                flat = flat.clone()
            chunks.append([self.item, flat, 1])
            key_bytes[key] += size
            self._staged_bytes += size
            if self._staged_bytes >= self.buffer_bytes:
                for k in sorted(key_bytes, key=key_bytes.__getitem__, reverse=True):
                    self._bin(k)
                    if self._staged_bytes <= self.buffer_bytes // 2:
                        break

        return collect

    def _bin(self, key: tuple[str, str]) -> None:
        """Bin one activation's staged tensors (those counted the same number of times together); note the first
        item of any non-finite value among them."""
        chunks = self._staged.pop(key)
        self._staged_bytes -= self._key_bytes.pop(key)
        hist = self.hists[key]
        before = hist.nonfinite_tensor
        by_weight: dict[int, list[Tensor]] = {}
        for _, c, w in chunks:
            by_weight.setdefault(w, []).append(c)
        for w, group in by_weight.items():
            hist.collect(torch.cat(group) if len(group) > 1 else group[0], weight=w)
        if key in self.nonfinite_first:
            return
        after = hist.nonfinite_tensor
        if _reads_are_free(after):
            if int(after) > int(before):
                self.nonfinite_first[key] = next(i for i, c, _ in chunks if not bool(torch.isfinite(c).all()))
            return
        items = [i for i, _, _ in chunks]
        flags = None if items[0] == items[-1] else torch.stack([torch.isfinite(c).all() for _, c, _ in chunks])
        self._pending.append((key, before, after, items, flags))

    def _resolve_pending(self, item: int | None = None) -> None:
        """Read, in one host sync, the non-finite counts of the pending bins and (with `item`) of the activations
        binned at once; note the first item of each activation's first non-finite value."""
        pending, self._pending = self._pending, []
        direct = []
        if item is not None:
            direct = [k for k in self.order if k not in self.nonfinite_first and k not in self._staged]
        if not pending and not direct:
            return
        counts = [after - before.to(after.device) for _, before, after, _, _ in pending]
        counts += [self.hists[k].nonfinite_tensor for k in direct]
        devices = {c.device for c in counts}
        values = torch.stack(counts).tolist() if len(devices) == 1 else [int(c) for c in counts]
        first: dict[tuple[str, str], int] = {}
        for (key, _, _, items, flags), n in zip(pending, values, strict=False):
            if n > 0 and key not in self.nonfinite_first:
                at = items[0] if flags is None else items[flags.logical_not().nonzero()[0, 0].item()]
                first[key] = min(first.get(key, at), at)
        for key, n in zip(direct, values[len(pending) :], strict=True):
            if n > 0 and key not in first:
                first[key] = item
        self.nonfinite_first.update(first)

    def flush(self) -> None:
        """Bin every staged tensor."""
        for key in list(self._staged):
            self._bin(key)

    def note_nonfinite(self, item: int) -> list[tuple[str, str]]:
        """Activations whose first non-finite value became known since the last call (call after each item;
        tensors binned at once during `item` are attributed to it, staged ones to the item that produced them)."""
        self._resolve_pending(item)
        new = [k for k in self.nonfinite_first if k not in self._reported]
        self._reported.update(new)
        return new

    def nonfinite(self) -> list[NonFinite]:
        """Every activation that saw NaN/Inf, the earliest prompt first, then in execution order."""
        self._resolve_pending()
        rank = {k: i for i, k in enumerate(self.order)}
        keys = sorted(self.nonfinite_first, key=lambda k: (self.nonfinite_first[k], rank.get(k, len(rank))))
        return [NonFinite(u, a, self.hists[(u, a)].nonfinite, self.nonfinite_first[(u, a)]) for u, a in keys]

    @property
    def nbytes(self) -> int:
        """Bytes of histogram state held (fixed, whatever was collected)."""
        return sum(h.nbytes for h in self.hists.values())

    def compute(self, state: Mapping[str, Tensor] | None = None) -> dict[str, dict[str, ActStats | None]]:
        """unit -> activation -> stats; None where no finite value was collected. `state`: this observer's
        `state_dict()`, where the caller has it already (saves stacking the histograms again)."""
        if state is None:
            state = self.state_dict()
        out: dict[str, dict[str, ActStats | None]] = {name: {} for name in self.kinds}
        if not self.hists:
            return out
        rows = stats_from_state(_stacked_fields(state))
        for (unit, act), stats in zip(self.hists, rows, strict=True):
            out[unit][act] = stats
        return out

    def reset(self) -> None:
        self._staged.clear()
        self._key_bytes.clear()
        self._staged_bytes = 0
        self._pending.clear()
        for hist in self.hists.values():
            hist.reset()
        self.order.clear()
        self._seen.clear()
        self.nonfinite_first.clear()
        self._reported.clear()

    def state_dict(self) -> dict[str, Tensor]:
        """Every histogram's state, stacked (see `histogram.stack_states`) under `hist/FIELD`, with the row
        names as a JSON list of [unit, activation] pairs in the uint8 tensor `hist/keys`."""
        self.flush()
        keys = json.dumps([list(k) for k in self.hists]).encode()
        stacked = stack_states(list(self.hists.values())) if self.hists else {}
        state = {f"{HIST}/{field}": t for field, t in stacked.items()}
        state[f"{HIST}/keys"] = torch.frombuffer(bytearray(keys), dtype=torch.uint8)
        return state

    def load_state_dict(
        self,
        state: Mapping[str, Tensor],
        order: Sequence[Sequence[str]] = (),
        nonfinite_first: Mapping[str, int] | None = None,
    ) -> None:
        """Restore histograms (and the bookkeeping) saved by `state_dict`."""
        if f"{HIST}/keys" not in state:
            raise AnnaError("calibration state has no histogram keys (hist/keys)")
        try:
            keys = json.loads(state[f"{HIST}/keys"].numpy().tobytes())
            hists = unstack_states(_stacked_fields(state)) if keys else []
        except (ValueError, UnicodeDecodeError) as e:
            raise AnnaError(f"calibration histogram state is damaged: {e}") from None
        if len(keys) != len(hists):
            raise AnnaError(f"calibration state names {len(keys)} histograms but holds {len(hists)}")
        loaded: dict[str, dict[str, StreamingHistogram]] = {}
        for (unit, act), hist in zip(keys, hists, strict=True):
            loaded.setdefault(unit, {})[act] = hist
        for unit, act in self.hists:
            if act not in loaded.get(unit, {}):
                raise AnnaError(f"calibration checkpoint has no histogram for {unit} {act}")
            self.hists[(unit, act)] = loaded[unit][act]
        self.order[:] = [(u, a) for u, a in order]
        self._seen = set(self.order)
        self.nonfinite_first = {tuple(k.split("\t")): v for k, v in (nonfinite_first or {}).items()}
        self._reported = set(self.nonfinite_first)
        self._pending.clear()

    def bookkeeping(self) -> dict:
        """JSON-ready order and first non-finite items, for checkpoints."""
        self._resolve_pending()
        return {
            "order": [list(k) for k in self.order],
            "nonfinite_first": {"\t".join(k): v for k, v in self.nonfinite_first.items()},
        }


def _stacked_fields(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The `stack_states` fields of a `UnitObservers.state_dict` (`hist/FIELD`, without the key list)."""
    return {k[len(HIST) + 1 :]: v for k, v in state.items() if k.startswith(HIST + "/") and k != f"{HIST}/keys"}
