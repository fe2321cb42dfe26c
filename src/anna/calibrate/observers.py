"""The observers of one calibration: a StreamingHistogram per (unit, activation) and a per-channel absmax per weight.

Follows the observer protocol of DESIGN.md: `collect`, then `compute`, then `reset`. State is a flat dict of CPU
tensors (`hist/UNIT/ACT/FIELD`, `weight/UNIT/WEIGHT`) for safetensors, so a run can be checkpointed and resumed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from anna.calibrate.histogram import ActStats, PerChannelAbsMax, StreamingHistogram
from anna.errors import AnnaError
from anna.inventory import ACTIVATIONS, quantized_weights

HIST = "hist"
WEIGHT = "weight"


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
    staged (copied) per activation and binned together: an activation's stage is binned once it holds
    `direct_bytes`; when all stages together reach `buffer_bytes`, the largest are binned until half remains; all
    are binned before any state is read. The counts are the same as binning each tensor at once (the histogram's
    re-binning is exact); memory stays within `buffer_bytes`. `buffer_bytes=0` bins every tensor at once.
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
        self._staged: dict[tuple[str, str], list[tuple[int, Tensor]]] = {}
        self._key_bytes: dict[tuple[str, str], int] = {}
        self._staged_bytes = 0
        self.nonfinite_first: dict[tuple[str, str], int] = {}
        self._reported: set[tuple[str, str]] = set()
        # accelerators: bins whose non-finite counts are read at the next `note_nonfinite` (key, count before,
        # count after, the chunks' items, per-chunk all-finite flags where the chunks span several items)
        self._pending: list[tuple[tuple[str, str], Tensor, Tensor, list[int], Tensor | None]] = []

    def collector(self, unit: str, activation: str, owned: bool = False) -> Callable[[Tensor], None]:
        """A fast `collect(x)` for one activation (what hooks and taps call). `owned`: the caller hands the tensors
        over (nothing else holds or changes them), so they are staged without a copy."""
        key = (unit, activation)
        hist = self.hists[key]
        seen, order, staged, key_bytes = self._seen, self.order, self._staged, self._key_bytes

        def collect(x: Tensor) -> None:
            if key not in seen:
                seen.add(key)
                order.append(key)
            size = x.numel() * x.element_size()
            if size >= self.direct_bytes:
                hist.collect(x)
                return
            staged.setdefault(key, []).append((self.item, x.detach() if owned else x.detach().clone()))
            key_bytes[key] = key_bytes.get(key, 0) + size
            self._staged_bytes += size
            if key_bytes[key] >= self.direct_bytes:
                self._bin(key)
            elif self._staged_bytes >= self.buffer_bytes:
                for k in sorted(key_bytes, key=key_bytes.__getitem__, reverse=True):
                    self._bin(k)
                    if self._staged_bytes <= self.buffer_bytes // 2:
                        break

        return collect

    def _bin(self, key: tuple[str, str]) -> None:
        """Bin one activation's staged tensors; note the first item of any non-finite value among them."""
        chunks = self._staged.pop(key)
        self._staged_bytes -= self._key_bytes.pop(key)
        hist = self.hists[key]
        before = hist.nonfinite_tensor
        hist.collect(torch.cat([c.reshape(-1) for _, c in chunks]) if len(chunks) > 1 else chunks[0][1])
        if key in self.nonfinite_first:
            return
        after = hist.nonfinite_tensor
        if _reads_are_free(after):
            if int(after) > int(before):
                self.nonfinite_first[key] = next(i for i, c in chunks if not bool(torch.isfinite(c).all()))
            return
        items = [i for i, _ in chunks]
        flags = None if items[0] == items[-1] else torch.stack([torch.isfinite(c).all() for _, c in chunks])
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

    def compute(self) -> dict[str, dict[str, ActStats | None]]:
        """unit -> activation -> stats; None where no finite value was collected."""
        self.flush()
        out: dict[str, dict[str, ActStats | None]] = {name: {} for name in self.kinds}
        for (unit, act), hist in self.hists.items():
            out[unit][act] = hist.compute() if hist.count else None
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
        """Every histogram's state under `hist/UNIT/ACT/FIELD`."""
        self.flush()
        return {
            f"{HIST}/{unit}/{act}/{field}": t
            for (unit, act), hist in self.hists.items()
            for field, t in hist.state_dict().items()
        }

    def load_state_dict(
        self,
        state: Mapping[str, Tensor],
        order: Sequence[Sequence[str]] = (),
        nonfinite_first: Mapping[str, int] | None = None,
    ) -> None:
        """Restore histograms (and the bookkeeping) saved by `state_dict`."""
        loaded = histograms_from_state(state)
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


def weight_absmax(units: Sequence[tuple[str, nn.Module]]) -> dict[str, Tensor]:
    """Per-output-channel absmax of every quantized weight, keyed `weight/UNIT/WEIGHT`."""
    out: dict[str, Tensor] = {}
    for name, module in units:
        for wname, w in quantized_weights(module):
            obs = PerChannelAbsMax()
            obs.collect(w.detach())
            out[f"{WEIGHT}/{name}/{wname}"] = obs.compute().cpu()
    return out


def histograms_from_state(state: Mapping[str, Tensor]) -> dict[str, dict[str, StreamingHistogram]]:
    """unit -> activation -> histogram, from a `state_dict` (e.g. stats.safetensors)."""
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, t in state.items():
        if not key.startswith(HIST + "/"):
            continue
        unit_act, _, field = key[len(HIST) + 1 :].rpartition("/")
        unit, _, act = unit_act.rpartition("/")
        groups.setdefault((unit, act), {})[field] = t
    out: dict[str, dict[str, StreamingHistogram]] = {}
    for (unit, act), sub in groups.items():
        out.setdefault(unit, {})[act] = StreamingHistogram.from_state_dict(sub)
    return out
