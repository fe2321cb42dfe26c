"""Attention units observed through their projections (the fast path) against the tapped re-run (the reference):
identical statistics for every activation the two see alike (input, context, q, k, v, p), exact histogram counts."""

from __future__ import annotations

import torch

from anna.adapters import GenerationSettings
from anna.calibrate.histogram import StreamingHistogram
from anna.calibrate.hooks import _observes_by_projections, observe
from anna.calibrate.observers import UnitObservers
from anna.calibrate.runner import select_units
from anna.generate import generate_images

SETTINGS = GenerationSettings(steps=2, guidance=5.0, height=64, width=64)


def _observe(model, prompts, rerun: bool, buffer_bytes: int = 0) -> UnitObservers:
    unet = model.pipeline.unet
    units = [u for u in select_units(unet) if u[1] == "attention"]
    observers = UnitObservers([(n, k) for n, k, _ in units], buffer_bytes=buffer_bytes)
    with observe(units, observers, rerun_attention=rerun):
        generate_images(model, prompts[:1], SETTINGS, seed=5, progress=False)
    observers.flush()
    return observers


def test_projection_observers_match_rerun(tiny_model, prompts):
    units = [u for u in select_units(tiny_model.pipeline.unet) if u[1] == "attention"]
    assert units and all(_observes_by_projections(m) for _, _, m in units)
    fast, ref = _observe(tiny_model, prompts, False), _observe(tiny_model, prompts, True)
    assert set(fast.hists) == set(ref.hists)
    for (unit, act), hist in ref.hists.items():
        mine = fast.hists[(unit, act)].state_dict()
        theirs = hist.state_dict()
        assert int(theirs["counts"].sum()) > 0, (unit, act)
        if act == "out_in":  # the fused attention's output vs the explicit math's: same values up to rounding
            assert int(mine["counts"].sum()) == int(theirs["counts"].sum()) > 0
            continue
        for field, t in theirs.items():
            assert torch.equal(mine[field], t), (unit, act, field)


def test_cross_attention_repeats_counted_exactly(tiny_model, prompts, monkeypatch):
    """Across steps the text embeddings are the same tensor: staged cross-attention context, k and v are counted
    again instead of binned again, with exactly the histograms of binning every tensor."""
    direct = _observe(tiny_model, prompts, False)
    weighted: list[tuple[StreamingHistogram, int]] = []
    collect = StreamingHistogram.collect

    def spy(self, x, weight=1):
        weighted.append((self, weight))
        return collect(self, x, weight)

    monkeypatch.setattr(StreamingHistogram, "collect", spy)
    staged = _observe(tiny_model, prompts, False, buffer_bytes=32 << 20)
    weights = {k: w for k, h in staged.hists.items() for hist, w in weighted if hist is h and w > 1}
    for key, hist in direct.hists.items():
        mine, theirs = staged.hists[key].state_dict(), hist.state_dict()
        assert all(torch.equal(mine[f], t) for f, t in theirs.items()), key
    cross = {(u, a) for u, a in direct.hists if "attn2" in u and a in ("context", "k", "v")}
    assert cross and set(weights) == cross and set(weights.values()) == {SETTINGS.steps}
