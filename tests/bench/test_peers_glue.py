"""bench/peers_models.py: the peer's byte accounting is anna's, and the recorded component inputs reproduce the
pipeline's own component outputs."""

from __future__ import annotations

import random

import pytest
import torch
from peers_models import (
    PeerBytes,
    anna_assignment,
    decoder_forward,
    decoder_rows,
    record_calls,
    rotate_calls,
    stack,
    unet_forward,
    unet_rows,
)
from torch import nn

from anna.inventory import build_inventory
from anna.options.registry import option_bytes
from anna.units import unit_modules


def _layers(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _anna_bytes(inv, module: nn.Module, plan: dict[str, str]) -> int:
    """The component's bytes under `plan`, unit by unit through `option_bytes`."""
    return inv.base_bytes + sum(option_bytes(m, kind, plan[name]) for name, kind, m in unit_modules(module))


@pytest.mark.parametrize("component", ["unet", "vae_decoder"])
def test_all_fp8_peer_costs_anna_all_fp8(tiny, component):
    module = tiny.component(component)
    inv = build_inventory(tiny, component)
    peer = PeerBytes(module, inv.total_bytes_fp16)
    layers = set(_layers(module))
    plan = anna_assignment(module, layers)
    kinds = {u.name: u.kind for u in inv.units}
    # every conv and linear unit FP8 (absmax), every attention unit's four projections FP8 with the math in FP16
    assert all(plan[u] == ("fp8-absmax-fp16math" if k == "attention" else "fp8-absmax") for u, k in kinds.items())
    assert peer.of(layers) == _anna_bytes(inv, module, plan) == inv.plan_bytes(plan)
    assert peer.of(set()) == inv.plan_bytes({}) == inv.total_bytes_fp16
    # the conv and linear units alone: exactly anna's fp8 bytes of those units, whatever the attention units do
    convlin = {u.name for u in inv.units if u.kind != "attention"}
    saved = sum(u.bytes["fp16"] - u.bytes["fp8-absmax"] for u in inv.units if u.name in convlin)
    assert inv.total_bytes_fp16 - peer.of(convlin) == saved > 0


def test_partial_peer_plans_cost_anna_bytes(tiny):
    unet = tiny.component("unet")
    inv = build_inventory(tiny, "unet")
    peer = PeerBytes(unet, inv.total_bytes_fp16)
    layers = _layers(unet)
    assert len(layers) == len(peer.saving) == 50 + 77 + 4 * 34  # convs, linears outside attention, projections
    rng = random.Random(0)
    seen = set()
    for _ in range(20):
        fp8 = {n for n in layers if rng.random() < 0.6}
        plan = anna_assignment(unet, fp8)
        seen |= set(plan.values())
        assert peer.of(fp8) == _anna_bytes(inv, unet, plan)
    assert {"fp8-absmax-fp16math-fp16k", "fp8-absmax-fp16math-fp16qv", "fp16"} <= seen  # per-projection variants
    # keeping one key projection in FP16 costs its weight's second byte plus its scales back
    attn = next(u for u in inv.units if u.kind == "attention")
    key = f"{attn.name}.to_k"
    assert peer.of(set(layers) - {key}) - peer.of(set(layers)) == (
        attn.bytes["fp8-absmax-fp16math-fp16k"] - attn.bytes["fp8-absmax-fp16math"])
    with pytest.raises(KeyError):
        peer.of({attn.name})


def test_recorded_rows_reproduce_the_pipeline_calls(tiny):
    unet = tiny.component("unet")
    calls = record_calls(tiny, "unet", ["a red bus on a street"], "record")
    assert len(calls) == tiny.defaults.steps
    rows = unet_rows(calls)
    assert len(rows) == 2 * tiny.defaults.steps  # classifier-free guidance: two samples per call
    with torch.inference_mode():
        want = torch.cat([unet(*a, **k)[0] for a, k in calls])
        got = torch.cat([unet_forward(unet, b) for b in stack(rows, 3)])
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    dec = tiny.component("vae_decoder")
    calls = record_calls(tiny, "vae_decoder", ["a cat", "two dogs"], "record")
    rows = decoder_rows(calls)
    assert len(rows) == 2
    with torch.inference_mode():
        want = torch.cat([dec(*a, **k) for a, k in calls])
        got = decoder_forward(dec, stack(rows, 2)[0])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_rotate_calls_keeps_every_step_equally():
    calls = [(p, j) for p in range(8) for j in range(4)]  # 8 prompts x 4 steps, in pipeline order
    one = rotate_calls(calls, 4, 1)
    assert one == [(p, p % 4) for p in range(8)]
    two = rotate_calls(calls, 4, 2)
    assert len(two) == 16 and sorted(j for _, j in two) == sorted(list(range(4)) * 4)
    assert rotate_calls(calls, 4, None) == calls == rotate_calls(calls, 4, 4)


def test_minilm_peer_bytes_are_anna_bytes():
    """MiniLM (BertAttention: query/key/value/output.dense) maps onto anna's units the same way; no Conv2d there."""
    from anna.adapters import minilm

    model = minilm.load(["a dog runs"])
    module = model.component()
    inv = build_inventory(model)
    peer = PeerBytes(module, inv.total_bytes_fp16)
    layers = _layers(module)
    assert len(layers) == 6 * 6 + 1  # per layer: 4 attention projections, intermediate and output; the pooler
    rng = random.Random(1)
    for _ in range(10):
        fp8 = {n for n in layers if rng.random() < 0.7}
        assert peer.of(fp8) == _anna_bytes(inv, module, anna_assignment(module, fp8)) == inv.plan_bytes(
            anna_assignment(module, fp8))
