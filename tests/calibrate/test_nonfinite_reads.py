"""Non-finite counts read once per item (deferred, as on accelerators) name the same first items as reads at once."""

from __future__ import annotations

import pytest
import torch

import anna.calibrate.observers as observers_mod
from anna.calibrate.observers import UnitObservers


def _run(direct_bytes: int) -> list:
    obs = UnitObservers(
        [("a", "linear"), ("b", "linear"), ("c", "linear")], buffer_bytes=4096, direct_bytes=direct_bytes
    )
    ca, cb, cc = obs.collector("a", "input"), obs.collector("b", "input"), obs.collector("c", "input")
    for item in range(6):
        obs.item = item
        for k in range(3):
            x = torch.randn(40)
            if (item, k) == (2, 1):
                x[3] = float("nan")
            ca(x)
            y = torch.randn(300)
            if item == 4:
                y[0] = float("inf")
            cb(y)
            cc(torch.randn(50))
        obs.note_nonfinite(item)
    obs.flush()
    obs.note_nonfinite(5)
    return [n.to_json() for n in obs.nonfinite()]


@pytest.mark.parametrize("direct_bytes", [256, 1 << 20])
def test_deferred_reads_match_immediate(monkeypatch, direct_bytes):
    immediate = _run(direct_bytes)
    assert [(n["unit"], n["first_item"], n["count"]) for n in immediate] == [("a", 2, 1), ("b", 4, 3)]
    monkeypatch.setattr(observers_mod, "_reads_are_free", lambda t: False)
    assert _run(direct_bytes) == immediate
