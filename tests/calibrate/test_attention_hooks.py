"""Attention units observed through their projections (the fast path) against the tapped re-run (the reference):
identical statistics for every activation the two see alike (input, context, q, k, v, p), exact histogram counts."""

from __future__ import annotations

import torch

from anna.adapters import GenerationSettings
from anna.calibrate.hooks import _observes_by_projections, observe
from anna.calibrate.observers import UnitObservers
from anna.calibrate.runner import select_units
from anna.generate import generate_images

SETTINGS = GenerationSettings(steps=2, guidance=5.0, height=64, width=64)


def _observe(model, prompts, rerun: bool) -> UnitObservers:
    unet = model.pipeline.unet
    units = [u for u in select_units(unet) if u[1] == "attention"]
    observers = UnitObservers([(n, k) for n, k, _ in units], buffer_bytes=0)
    with observe(units, observers, rerun_attention=rerun):
        generate_images(model, prompts[:1], SETTINGS, seed=5, progress=False)
    observers.flush()
    return observers


def test_projection_hooks_match_rerun(tiny_model, prompts):
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
